"""The gate loads the base in the precision training used, unless eval.precision says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import loraforge.train.precision as precision_module
from loraforge.config import Config
from loraforge.pipeline.evaluate_run import gate_dtype


def _config(tmp_path: Path, train: str, gate: str) -> Config:
    return Config.model_validate(
        {"output": str(tmp_path / "run"), "data": {"train": str(tmp_path / "t.jsonl")},
         "train": {"precision": train}, "eval": {"precision": gate}}
    )  # fmt: skip


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "fast_bf16_available", lambda device="cpu": True)


@pytest.mark.usefixtures("bf16_cpu")
def test_gate_on_a_bf16_cpu_runs_fp32_when_training_was_told_fp32(tmp_path: Path) -> None:
    assert gate_dtype(_config(tmp_path, "fp32", "auto"), "cpu") == torch.float32


@pytest.mark.usefixtures("bf16_cpu")
def test_gate_on_a_bf16_cpu_runs_bf16_when_both_are_auto(tmp_path: Path) -> None:
    assert gate_dtype(_config(tmp_path, "auto", "auto"), "cpu") == torch.bfloat16


@pytest.mark.usefixtures("bf16_cpu")
def test_explicit_eval_precision_overrides_training(tmp_path: Path) -> None:
    assert gate_dtype(_config(tmp_path, "fp32", "bf16"), "cpu") == torch.bfloat16
