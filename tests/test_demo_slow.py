"""`loraforge demo --quick` on the real embedded base: every step runs and leaves its artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraforge.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_leaves_a_gated_adapter_and_its_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--quick", "--output", str(out), "--data-dir", str(REPO / "examples" / "support_tickets")])
    printed = capsys.readouterr().out
    manifest = json.loads((out / "adapter" / "loraforge.json").read_text())
    verdict = manifest["eval"]["verdict"]
    assert code == (0 if verdict == "pass" else 3)
    for artifact in (
        "adapter/adapter_model.safetensors",
        "eval/report.html",
        "loss.png",
        "metrics.jsonl",
        "data_report.json",
        "config.yaml",
    ):
        assert (out / artifact).is_file(), artifact
    for step in ("1. the embedded base", "2. the data", "3. training", "4. the eval gate", "5. base vs adapter"):
        assert step in printed
