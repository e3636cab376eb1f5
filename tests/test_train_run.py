"""`loraforge train` as a whole on the tiny base: one data stage with `prepare`, refusals that write
nothing, and the chat template that trained is the one gated and recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from tiny import LLAMA3_STYLE_TEMPLATE, save_tiny_base

from loraforge.cli import main
from loraforge.config import Config, validate_config
from loraforge.errors import ResumeRefused
from loraforge.models import read_manifest
from loraforge.pipeline.evaluate_run import evaluate_run
from loraforge.pipeline.run import train_and_gate
from loraforge.pipeline.train_run import run_training

SYSTEM = "Answer in one word."
LLAMA3_MARKER = "<|start_header_id|>"
CHATML_MARKER = "<|im_start|>"


def _rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r-{i}",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"what is item {i} of the order please"},
                {"role": "assistant", "content": f"item {i} is a desk"},
            ],
        }
        for i in range(start, start + n)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _raw(tmp_path: Path, base: Path, template: Path | None = None) -> dict[str, Any]:
    # replay off: a base prompted in data.template gets no seeded replay cache (conftest), and a tiny
    # base answering the 151 built-in prompts costs minutes for rows it never finishes
    data: dict[str, Any] = {"train": str(_write_jsonl(tmp_path / "train.jsonl", _rows(24))), "pii": "off"}
    data["replay"] = None
    data["golden"] = str(_write_jsonl(tmp_path / "golden.jsonl", _rows(3, start=100)))
    if template is not None:
        data["template"] = str(template)
    return {
        "base": str(base),
        "output": str(tmp_path / "run"),
        "data": data,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "micro_batch_size": 4, "eval_every": 1.0, "precision": "fp32"},
        "eval": {"max_new_tokens": 4, "probes": [], "precision": "fp32", "tolerance": 3},
    }


def _config(raw: dict[str, Any]) -> Config:
    return validate_config(raw, source="test")


def _write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def test_train_after_prepare_reuses_the_prepared_data(tiny_base_dir: Path, tmp_path: Path) -> None:
    raw = _raw(tmp_path, tiny_base_dir)
    raw["eval"]["gate"] = False
    config = _write_config(tmp_path, raw)
    assert main(["prepare", str(config)]) == 0
    report = tmp_path / "run" / "data_report.json"
    assert json.loads(report.read_text())["cached"] is False
    assert main(["train", str(config)]) == 0
    assert json.loads(report.read_text())["cached"] is True


def test_a_refused_resume_leaves_the_earlier_runs_files_as_they_were(tiny_base_dir: Path, tmp_path: Path) -> None:
    raw = _raw(tmp_path, tiny_base_dir)
    run_training(_config(raw))
    out = tmp_path / "run"
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "data_report.json")}
    raw["train"]["lr"] = 1e-3
    with pytest.raises(ResumeRefused, match="train.lr"):
        run_training(_config(raw), resume=True)
    assert {name: (out / name).read_bytes() for name in before} == before


def _gate_prompts(out: Path) -> list[str]:
    return [row["prompt"] for row in json.loads((out / "eval" / "report.json").read_text())["rows"]]


def test_a_base_without_a_template_is_gated_in_data_template(tmp_path: Path) -> None:
    bare = save_tiny_base(tmp_path / "bare", chat_template=None)  # type: ignore[arg-type]
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3_STYLE_TEMPLATE)
    outcome = train_and_gate(_config(_raw(tmp_path, bare, template)))
    assert outcome.gate is not None
    prompts = _gate_prompts(tmp_path / "run")
    assert len(prompts) == 3 and all(LLAMA3_MARKER in p and SYSTEM in p for p in prompts)
    manifest = read_manifest(outcome.train.adapter_dir) or {}
    assert manifest["chat_template"]["text"] == LLAMA3_STYLE_TEMPLATE
    assert manifest["chat_template"]["sha256"] == hashlib.sha256(LLAMA3_STYLE_TEMPLATE.encode()).hexdigest()


@pytest.fixture(scope="module")
def overridden_run(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the ChatML tiny base trained (and gated) with a Llama-3-style data.template."""
    tmp_path = tmp_path_factory.mktemp("override")
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3_STYLE_TEMPLATE)
    train_and_gate(_config(_raw(tmp_path, tiny_base_dir, template)))
    return tmp_path


def test_a_template_override_is_what_the_gate_prompts_in(overridden_run: Path) -> None:
    prompts = _gate_prompts(overridden_run / "run")
    assert prompts and all(LLAMA3_MARKER in p and CHATML_MARKER not in p for p in prompts)


def test_eval_of_an_adapter_prompts_in_the_template_its_manifest_records(
    overridden_run: Path, tiny_base_dir: Path
) -> None:
    raw = _raw(overridden_run, tiny_base_dir)  # no data.template: the manifest holds it
    raw["output"] = str(overridden_run / "again")
    report = evaluate_run(_config(raw), adapter_dir=overridden_run / "run" / "adapter")
    assert all(LLAMA3_MARKER in row.prompt and CHATML_MARKER not in row.prompt for row in report.rows)
