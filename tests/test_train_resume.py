"""Crash-safe resume: SIGKILL mid-run, resume, and end with the bytes of an uninterrupted run.

The worker is this file run as a script (`python tests/test_train_resume.py OUT [--resume]`), so
the killed process is a real separate process, as with `loraforge train`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraforge.config import LoraSpec, TrainSpec
from loraforge.errors import TrainError
from loraforge.train import TrainResult

SPEC = dict(lr=5e-3, warmup_ratio=0.1, micro_batch_size=4, grad_accum=2, epochs=4, eval_every=0.25, precision="fp32")
WEIGHTS = "adapter_model.safetensors"


def run_worker(base_dir: Path, out: Path, resume: bool, identity: str = "v1", **spec: object) -> TrainResult:
    """Train on the tiny model and export the best adapter (what the worker process does)."""
    import torch
    from manifests import valid_manifest
    from train_rows import tiny_plan
    from transformers import set_seed

    from loraforge.models import attach_lora, load_base
    from loraforge.train import export_adapter, train

    torch.set_num_threads(1)  # same kernels and reduction order in every run
    set_seed(0)
    model = attach_lora(load_base(str(base_dir)).model, LoraSpec(r=4, alpha=8, dropout=0.1))
    plan = tiny_plan(base_dir, n_train=32, micro=4)
    result = train(model, plan, TrainSpec(**{**SPEC, **spec}), out, identity={"data": identity}, resume=resume)
    export_adapter(model, out / "adapter", valid_manifest())
    return result


def _spawn(base_dir: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, __file__, str(base_dir), str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen[bytes], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if any((p / "state.json").is_file() for p in (out / "checkpoints").glob("step-*")):
            return
        time.sleep(0.01)
    raise AssertionError(
        f"no checkpoint appeared (worker exited {proc.returncode}): {proc.stderr and proc.stderr.read()!r}"
    )


def test_killed_and_resumed_run_ends_with_identical_adapter_bytes(tiny_base_dir: Path, tmp_path: Path) -> None:
    straight = _spawn(tiny_base_dir, tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr and straight.stderr.read()
    victim = _spawn(tiny_base_dir, tmp_path / "killed")
    _wait_for_checkpoint(tmp_path / "killed", victim)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    steps_done = [p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*")]
    assert not (tmp_path / "killed" / "adapter").exists(), f"the run finished before the kill ({steps_done})"
    resumed = _spawn(tiny_base_dir, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr and resumed.stderr.read()
    expected = (tmp_path / "straight" / "adapter" / WEIGHTS).read_bytes()
    assert (tmp_path / "killed" / "adapter" / WEIGHTS).read_bytes() == expected


def test_resume_with_changed_data_is_refused_showing_the_difference(tiny_base_dir: Path, tmp_path: Path) -> None:
    run_worker(tiny_base_dir, tmp_path, resume=False, max_steps=2)
    with pytest.raises(TrainError, match=r"(?s)cannot resume.*data: checkpoint has 'v1', now 'v2'"):
        run_worker(tiny_base_dir, tmp_path, resume=True, identity="v2", max_steps=2)


def test_new_run_into_a_used_output_is_refused(tiny_base_dir: Path, tmp_path: Path) -> None:
    run_worker(tiny_base_dir, tmp_path, resume=False, max_steps=2)
    with pytest.raises(TrainError, match=r"pass --resume \(resume=True\)"):
        run_worker(tiny_base_dir, tmp_path, resume=False, max_steps=2)


def test_resuming_an_early_stopped_run_goes_straight_to_its_adapter(tiny_base_dir: Path, tmp_path: Path) -> None:
    # an lr this high overshoots at once, so eval loss never improves on the first eval
    stopping = dict(lr=0.5, epochs=6, eval_every=0.25, early_stopping_patience=2)
    first = run_worker(tiny_base_dir, tmp_path, resume=False, **stopping)
    assert first.stop_reason.startswith("early stop") and first.final_step < first.total_steps
    adapter = (tmp_path / "adapter" / WEIGHTS).read_bytes()
    again = run_worker(tiny_base_dir, tmp_path, resume=True, **stopping)
    assert (again.final_step, again.best_step) == (first.final_step, first.best_step)
    assert again.stop_reason == first.stop_reason
    assert (tmp_path / "adapter" / WEIGHTS).read_bytes() == adapter


def test_resume_with_nothing_to_resume_is_refused_naming_the_fix(tiny_base_dir: Path, tmp_path: Path) -> None:
    refused = rf"{tmp_path}: --resume \(resume=True\) was given but there is no complete "
    refused += r".*drop --resume \(resume=False\)"
    with pytest.raises(TrainError, match=refused):
        run_worker(tiny_base_dir, tmp_path, resume=True, max_steps=2)
    assert not (tmp_path / "checkpoints").exists()


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]), Path(sys.argv[2]), resume="--resume" in sys.argv)
