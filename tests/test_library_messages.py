"""Library refusals name the Python argument as well as the CLI flag, so a caller of the Python API
and a user of the CLI can each tell what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraforge.config import validate_config
from loraforge.config_yaml import parse_override
from loraforge.errors import ConfigError, EvalError, LoraforgeError, ModelError, TrainError
from loraforge.evaluate.runner import load_against
from loraforge.pipeline.evaluate_run import evaluate_run
from loraforge.plan.hardware import get_tier
from loraforge.serve.server import ServeOptions, check_options
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


def test_a_gate_without_an_adapter_names_adapter_dir_and_the_flag(tmp_path: Path) -> None:
    config = validate_config(
        {"base": "x", "output": str(tmp_path / "run"), "data": {"train": "t.jsonl"}}, "test", check_files=False
    )
    with pytest.raises(EvalError, match=r"pass --adapter DIR \(adapter_dir=DIR\)"):
        evaluate_run(config)


def test_a_bad_override_names_the_overrides_argument_and_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--set 'train\.lr' \(an overrides entry\): expected key\.path=value"):
        parse_override("train.lr")


def test_serve_option_problems_name_each_field_and_its_flag(tmp_path: Path) -> None:
    options = ServeOptions(registry=tmp_path / "none", base="x", tenants=tmp_path / "t.yaml", port=70000, max_loaded=0)
    with pytest.raises(LoraforgeError) as caught:
        check_options(options)
    message = str(caught.value)
    assert f"registry={tmp_path / 'none'!r} (--registry): no such directory" in message
    assert "port=70000 (--port): must be 0..65535" in message
    assert "max_loaded=0 (--max-loaded): must be at least 1" in message
