"""`loraforge demo` in full on the real embedded base: it passes the gate with margin, and every
step leaves its artifact. About 11 minutes of CI on a 2-core fp32 CPU (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraforge.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
GOLDEN_FLOOR = 0.85  # issue #19's margin: every machine kind and seed stays at or above it


def test_demo_passes_the_gate_with_golden_at_least_85_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--output", str(out), "--data-dir", str(REPO / "examples" / "support_tickets")])
    printed = capsys.readouterr().out
    report = json.loads((out / "eval" / "report.json").read_text())
    golden = [s for s in report["slices"].values() if not s["probe"]]
    passed = sum(s["adapter_passed"] for s in golden)
    total = sum(s["n"] for s in golden)
    assert code == 0, printed[-3000:]
    assert passed / total >= GOLDEN_FLOOR, f"golden {passed}/{total}"
    for artifact in (
        "adapter/adapter_model.safetensors",
        "adapter/loraforge.json",
        "adapter/README.md",
        "eval/report.html",
        "loss.png",
        "metrics.jsonl",
        "data_report.json",
        "config.yaml",
    ):
        assert (out / artifact).is_file(), artifact
    for step in (
        "1. the embedded base",
        "2. the data",
        "3. training",
        "4. the eval gate",
        "5. base vs adapter",
        "6. sign and publish",
        "7. serve it",
    ):
        assert step in printed
    served = " ".join(printed.split())  # rich wraps long lines
    assert "support-tickets@" in served and "answered in" in served, printed[-3000:]
