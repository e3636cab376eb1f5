"""`loraforge train` as a whole on the tiny base: one data stage with `prepare`, refusals that write
nothing, and the chat template that trained is the one gated and recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from run_configs import SYSTEM, _config, _raw, _write_config
from tiny import LLAMA3_STYLE_TEMPLATE, save_tiny_base

from loraforge.cli import main
from loraforge.errors import ResumeRefused
from loraforge.models import read_manifest
from loraforge.pipeline.evaluate_run import evaluate_run
from loraforge.pipeline.run import train_and_gate
from loraforge.pipeline.train_run import run_training

LLAMA3_MARKER = "<|start_header_id|>"
CHATML_MARKER = "<|im_start|>"


def test_train_after_prepare_reuses_the_prepared_data(
    tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a home of its own: other tests train on the same rows, so the shared data cache may already hold them
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
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
