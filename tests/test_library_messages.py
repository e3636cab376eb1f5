"""Library refusals name the Python argument as well as the CLI flag, so a caller of the Python API
and a user of the CLI can each tell what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraforge.errors import ConfigError, ModelError, TrainError
from loraforge.evaluate.runner import load_against
from loraforge.plan.hardware import get_tier
from loraforge.train.checkpoint import CHECKPOINTS_SUBDIR, STATE_NAME, resume_point


def test_an_unknown_tier_names_the_argument_and_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"name='TPU' \(--gpu\): unknown tier"):
        get_tier("TPU")


def test_an_against_dir_without_an_adapter_names_the_argument_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"against_dir=.* \(--against\): no adapter_config.json"):
        load_against(None, tmp_path, None)  # type: ignore[arg-type]  # refused before either is used


def test_a_resume_with_nothing_to_resume_names_resume_true_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match=r"--resume \(resume=True\) was given"):
        resume_point(tmp_path, {}, resume=True)


def test_a_fresh_run_into_a_used_output_names_resume_true_and_the_flag(tmp_path: Path) -> None:
    step = tmp_path / CHECKPOINTS_SUBDIR / "step-1"
    step.mkdir(parents=True)
    (step / STATE_NAME).write_text(json.dumps({"loop": {}, "identity": {}}))
    with pytest.raises(TrainError, match=r"pass --resume \(resume=True\) to continue it"):
        resume_point(tmp_path, {}, resume=False)
