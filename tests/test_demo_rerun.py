"""A second `loraforge demo` must work: the same run resumes, a changed one starts afresh.

Runs `demo --quick` on the tiny base (seconds), three times in one output directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loraforge.cli import main
from loraforge.pipeline.demo import DEMO_REGISTRY_NAME
from loraforge.ship.registry import Registry
from loraforge.ship.signing import verify_adapter

REPO = Path(__file__).resolve().parents[1]


def adapter_tensors(out: Path) -> dict[str, list[float]]:
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    return {name: tensor.flatten()[:8].tolist() for name, tensor in weights.items()}


def test_a_second_demo_resumes_and_a_changed_one_moves_the_earlier_run_aside(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tickets"
    shutil.copytree(REPO / "examples" / "support_tickets", data)
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--base", str(tiny_base_dir), "--output", str(out), "--data-dir", str(data)]

    first = main(args)
    printed = " ".join(capsys.readouterr().out.split())
    assert "earlier demo run" not in printed
    # a passing demo signs with the key made once under $LORAFORGE_HOME, then publishes and promotes
    public = Path(os.environ["LORAFORGE_HOME"]) / "keys" / "demo" / "public.pem"
    assert "adapter_model.safetensors" in verify_adapter(out / "adapter", public).files
    assert "6. sign and publish" in printed and f"registry entry: {DEMO_REGISTRY_NAME} v" in printed
    live = Registry.default().show(DEMO_REGISTRY_NAME)
    assert live.live and live.signed
    assert verify_adapter(live.path, public).files
    # then served from the registry, its signature checked again at load, and asked through the openai client
    assert "7. serve it" in printed and f"{DEMO_REGISTRY_NAME}@{live.version} answered in" in printed
    assert f"loraforge serve --registry {Registry.default().root}" in printed
    trained = adapter_tensors(out)
    steps = len((out / "metrics.jsonl").read_text().splitlines())

    again = main(args)  # the same config, base and data: resumed, and already finished
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    # the tiny random base answers no golden row or probe, before or after 8 steps: nothing regresses,
    # so the gate passes (a regression test of the verdict itself lives in test_eval_gate.py)
    assert first == 0 and again == 0
    assert "holds an earlier demo run: resuming it" in printed and "4. the eval gate" in printed
    assert f"{DEMO_REGISTRY_NAME}@" in printed and "answered in" in printed  # the demo tenant re-keyed, not refused
    assert adapter_tensors(out) == trained
    assert verify_adapter(out / "adapter", public).files  # the same key, reused
    assert not (tmp_path / "demo.previous").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) <= steps + 2  # no training steps were added

    train = data / "train.jsonl"
    rows = train.read_text(encoding="utf-8").splitlines()
    row = json.loads(rows[0])
    row["messages"][1]["content"] += " Thanks again."
    train.write_text("\n".join([json.dumps(row), *rows[1:]]) + "\n", encoding="utf-8")
    changed = main(args)  # the data changed: the earlier run cannot be resumed
    printed = " ".join(capsys.readouterr().out.split())
    assert changed == 0
    assert "moved it to" in printed
    previous = tmp_path / "demo.previous"
    assert (previous / "adapter" / "adapter_model.safetensors").is_file()
    assert adapter_tensors(previous) == trained
    for artifact in ("adapter/adapter_model.safetensors", "data_report.json", "config.yaml", "data/train.jsonl"):
        assert (out / artifact).is_file(), artifact
