"""`loraforge eval` as a library call: config -> base -> golden records -> base vs adapter
(vs --against) -> GateReport -> OUTPUT/eval/report.{json,md,html}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from loraforge.config import Config
from loraforge.data import REPORT_NAME, read_records, resolve_chat_template
from loraforge.data.types import Record
from loraforge.errors import EvalError
from loraforge.evaluate import GateReport, run_gate
from loraforge.models import load_adapter, load_base, manifest_chat_template, read_manifest
from loraforge.train import resolve_base_dtype

EVAL_DIR_NAME = "eval"


def recorded_golden_sha256(adapter_dir: Path, output: Path) -> tuple[str | None, str]:
    """The golden hash taken before training, and where it was found: the adapter manifest first,
    then the run's data report."""
    manifest = read_manifest(adapter_dir) or {}
    recorded = (manifest.get("data") or {}).get("golden_sha256")
    if recorded:
        return str(recorded), f"{adapter_dir}/loraforge.json"
    report_path = output / REPORT_NAME
    if report_path.is_file():
        try:
            recorded = json.loads(report_path.read_text(encoding="utf-8")).get("golden_sha256")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise EvalError(f"{report_path}: not a JSON object ({exc}); re-run `loraforge prepare`") from exc
        if recorded:
            return str(recorded), str(report_path)
    return None, ""


def golden_freeze_notes(golden: Path, current: str, recorded: str | None, source: str, allow_new: bool) -> list[str]:
    """Refuse a golden file changed since training unless allow_new; return what the report must say."""
    if recorded is None:
        return [f"golden set {golden} was not frozen: no golden_sha256 recorded by prepare or train"]
    if recorded == current:
        return []
    if not allow_new:
        raise EvalError(
            f"{golden}: the golden set changed since training (sha256 {recorded[:16]}... recorded in {source}, "
            f"now {current[:16]}...); restore the file, or pass --allow-new-golden to gate against the new one"
        )
    return [
        f"golden set {golden} changed since training (sha256 {recorded[:16]}... -> {current[:16]}...); "
        f"gated against the new file because --allow-new-golden was given"
    ]


def trained_template(adapter_dir: Path, config: Config, tokenizer: Any) -> str:
    """The chat template the adapter was trained with, as its manifest records it; for an adapter
    without one (plain PEFT, or trained before manifests held it), data.template or the tokenizer's."""
    recorded = manifest_chat_template(read_manifest(adapter_dir))
    if recorded is not None:
        return recorded
    return resolve_chat_template(tokenizer, config.data.template)


def read_golden(config: Config) -> tuple[list[Record], str | None]:
    path = config.data.golden
    if path is None:
        return [], None
    read = read_records(path, on_error="strict", max_row_chars=config.data.max_row_chars, golden=True)
    return read.records, read.sha256


def evaluate_run(
    config: Config,
    adapter_dir: Path | None = None,
    against_dir: Path | None = None,
    allow_new_golden: bool = False,
) -> GateReport:
    """Run the gate on OUTPUT/adapter (or adapter_dir) and write OUTPUT/eval/report.*."""
    adapter_dir = adapter_dir or config.output / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise EvalError(
            f"{adapter_dir}: no adapter to gate; run `loraforge train` first or pass --adapter DIR (adapter_dir=DIR)"
        )
    golden, current = read_golden(config)
    notes: list[str] = []
    info: dict[str, Any] = {"adapter": str(adapter_dir), "golden": None}
    if config.data.golden is not None and current is not None:
        recorded, source = recorded_golden_sha256(adapter_dir, config.output)
        notes += golden_freeze_notes(config.data.golden, current, recorded, source, allow_new_golden)
        info["golden"] = {"path": str(config.data.golden), "sha256": current, "recorded_sha256": recorded}
        info["allow_new_golden"] = allow_new_golden
    else:
        notes.append("no golden set (data.golden is empty): only the built-in probes were scored")
    # a GPU when there is one: the gate's cost is generation, which a GPU makes minutes into seconds
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = gate_dtype(config, device)
    info["precision"] = str(dtype).removeprefix("torch.")
    base = load_base(config.base, dtype=dtype, device=device)
    model = load_adapter(base.model, adapter_dir, base.fingerprint)
    template = trained_template(adapter_dir, config, base.tokenizer)
    return run_gate(
        base, model, golden, config.eval, config.output / EVAL_DIR_NAME, against_dir, info=info, notes=notes,
        chat_template=template,
    )  # fmt: skip


def gate_dtype(config: Config, device: torch.device | str) -> torch.dtype:
    """The base dtype the gate loads: eval.precision, whose auto is what train.precision resolves to."""
    # so the gate sees the model as it was trained: train.precision=fp32 on a bf16 CPU gates in fp32 too
    precision = config.train.precision if config.eval.precision == "auto" else config.eval.precision
    return resolve_base_dtype(precision, device)
