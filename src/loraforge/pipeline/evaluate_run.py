"""`loraforge eval` as a library call: config -> base -> golden records -> base vs adapter
(vs --against) -> GateReport -> OUTPUT/eval/report.{json,md,html}."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from loraforge.config import Config
from loraforge.data import REPORT_NAME, read_records, resolve_chat_template
from loraforge.data.types import Message, Record
from loraforge.errors import EvalError
from loraforge.evaluate import GateReport, run_gate
from loraforge.evaluate.baseline import BaselineReport, run_baseline
from loraforge.evaluate.probes import PROBE_MAX_NEW_TOKENS, load_probes
from loraforge.evaluate.scoring import Case, cases_from_records
from loraforge.evaluate.strength import choose_strength
from loraforge.models import LoadedBase, load_adapter, load_base, manifest_chat_template, read_manifest, write_manifest
from loraforge.models.adapter import rescale_adapter
from loraforge.train import resolve_base_dtype

EVAL_DIR_NAME = "eval"
BASELINE_DIR_NAME = "baseline"


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
    *,
    settle_strength: bool = False,
) -> GateReport:
    """Run the gate on OUTPUT/adapter (or adapter_dir) and write OUTPUT/eval/report.*. With
    `settle_strength` (after training), first choose the adapter's strength (train.strength) and
    bake it into the adapter's files, so the gate scores what ships."""
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
    if settle_strength:
        strength = settle_adapter_strength(config, base, model, adapter_dir, template)
        if strength is not None:
            info["strength"] = strength
    return run_gate(
        base, model, golden, config.eval, config.output / EVAL_DIR_NAME, against_dir, info=info, notes=notes,
        chat_template=template, examples=few_shot_examples(config, golden), seed=config.train.seed,
    )  # fmt: skip


def baseline_run(config: Config) -> BaselineReport:
    """`loraforge baseline`: the base and few-shot columns on the golden set, before any training;
    reports in OUTPUT/baseline/, the base's and few-shot's answers cached for the gate."""
    golden, sha256 = read_golden(config)
    if not golden:
        raise EvalError("loraforge baseline needs data.golden: a jsonl of golden rows with reference answers")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = gate_dtype(config, device)
    base = load_base(config.base, dtype=dtype, device=device)
    template = resolve_chat_template(base.tokenizer, config.data.template)
    info = {"golden": {"path": str(config.data.golden), "sha256": sha256}, "train": str(config.data.train),
            "precision": str(dtype).removeprefix("torch.")}  # fmt: skip
    return run_baseline(
        base, golden, few_shot_examples(config, golden), config.eval, config.output / BASELINE_DIR_NAME,
        chat_template=template, seed=config.train.seed, info=info,
    )  # fmt: skip


def few_shot_examples(config: Config, golden: Sequence[Record]) -> list[Record]:
    """The training rows the few-shot baseline draws its examples from: data.train of an sft run
    with a golden set and few_shot in eval.baselines; [] otherwise (DPO rows are pairs, not answers)."""
    if "few_shot" not in config.eval.baselines or not golden or config.train.method != "sft":
        return []
    if not config.data.train.is_file():
        return []
    read = read_records(config.data.train, on_error="skip", max_row_chars=config.data.max_row_chars)
    return read.records


def settle_adapter_strength(
    config: Config, base: LoadedBase, model: PeftModel, adapter_dir: Path, template: str
) -> dict[str, Any] | None:
    """Choose the adapter's strength (evaluate.strength), rescale its lora_B weights on disk and in
    `model` (loaded back from the rewritten file), and record the choice in the manifest. Once per
    adapter: one whose manifest holds a `strength` record (a resumed run that goes straight to the
    gate) keeps it. None where nothing was chosen: train.strength.scales=[1.0], DoRA, no manifest."""
    manifest = read_manifest(adapter_dir)
    spec = config.train.strength
    if manifest is None or manifest.get("format") != 2:
        return None
    if "strength" in manifest:
        return dict(manifest["strength"])
    if spec.scales == [1.0] or (manifest.get("lora") or {}).get("variant") == "dora":
        return None
    cases = selection_rows(config) if spec.probes is not None else None
    choice = choose_strength(base, model, config.eval, spec.scales, spec.tolerance, template, cases)
    record = choice.to_dict()
    if choice.scale != 1.0:
        path = rescale_adapter(adapter_dir, choice.scale)
        set_peft_model_state_dict(model, load_file(str(path)), adapter_name=str(model.active_adapter))
    manifest["strength"] = record
    write_manifest(adapter_dir, manifest)
    return record


def selection_rows(config: Config) -> list[Case]:
    """train.strength.probes as cases; a row whose question is also asked by the golden set or the
    gate's probes is refused (the strength would be chosen on the exam)."""
    path = config.train.strength.probes
    if path is None:
        return []
    read = read_records(path, on_error="strict", max_row_chars=config.data.max_row_chars, golden=True)
    cases = cases_from_records(read.records, PROBE_MAX_NEW_TOKENS, probe=True)
    exam = [*read_golden(config)[0], *load_probes(list(config.eval.probes))]
    asked = {_question(record.messages) for record in exam}
    clashes = [case.where for case in cases if _question(case.prompt) in asked]
    if clashes:
        raise EvalError(
            f"train.strength.probes: {', '.join(clashes[:5])} ask(s) a question the gate asks (data.golden or "
            "eval.probes); selection rows must be disjoint from the exam: remove or reword them"
        )
    return cases


def _question(messages: Sequence[Message]) -> str:
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return " ".join((users[-1] if users else "").lower().split())


def gate_dtype(config: Config, device: torch.device | str) -> torch.dtype:
    """The base dtype the gate loads: eval.precision, whose auto is what train.precision resolves to."""
    # so the gate sees the model as it was trained: train.precision=fp32 on a bf16 CPU gates in fp32 too
    precision = config.train.precision if config.eval.precision == "auto" else config.eval.precision
    return resolve_base_dtype(precision, device)
