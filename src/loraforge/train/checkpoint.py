"""Resumable checkpoints: adapter, optimizer, scheduler, RNG states, loop position.

`OUTPUT/checkpoints/step-N/` is filled in a temp dir and renamed (files.atomic_dir), and
`state.json` is written last, so a directory named step-N is always complete: a SIGKILL during a
save leaves only a hidden temp dir, which the next run removes.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from loraforge.errors import ResumeRefused, TrainError
from loraforge.files import atomic_dir
from loraforge.models.fingerprint import UNREADABLE_WEIGHTS

CHECKPOINTS_SUBDIR = "checkpoints"  # OUTPUT/checkpoints/step-N
STATE_NAME = "state.json"
ADAPTER_SUBDIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoopState:
    """Where the loop is, and what it has learned about eval loss so far."""

    step: int = 0  # optimizer steps done
    micro_index: int = 0  # micro-batches consumed, counting across epochs: the data position
    epoch: float = 0.0
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    stop_reason: str | None = None  # set when early stopping ended the run: a resume does not train on

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        state = cls(**{k: v for k, v in data.items() if k != "eval_losses"})
        state.eval_losses = [(int(s), float(v)) for s, v in data.get("eval_losses", [])]
        return state


def checkpoint_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step}"


def rng_state() -> dict[str, Any]:
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(
    checkpoints: Path,
    model: PeftModel,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    state: LoopState,
    identity: dict[str, Any],
    rng_states: list[dict[str, Any]],
) -> Path:
    """Write step-N atomically. `rng_states` holds one entry per process (index = rank)."""
    final = checkpoint_dir(checkpoints, state.step)
    with atomic_dir(final) as tmp:
        model.save_pretrained(str(tmp / ADAPTER_SUBDIR), safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "rng.json").write_text(json.dumps(rng_states))
        payload = {"loop": asdict(state), "identity": identity}
        (tmp / STATE_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return final


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """step-N dirs holding a state.json, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.glob("step-*") if (p / STATE_NAME).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def remove_partial(checkpoints: Path) -> None:
    """Temp dirs left by a process killed mid-save."""
    if checkpoints.is_dir():
        for leftover in checkpoints.glob(".step-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def prune_checkpoints(checkpoints: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest `keep` checkpoints and the best one."""
    complete = complete_checkpoints(checkpoints)
    for path in complete[:-keep] if keep else complete:
        if best_step is None or path != checkpoint_dir(checkpoints, best_step):
            shutil.rmtree(path, ignore_errors=True)


def read_checkpoint_state(path: Path) -> tuple[LoopState, dict[str, Any]]:
    payload = json.loads((path / STATE_NAME).read_text())
    return LoopState.from_dict(payload["loop"]), payload["identity"]


def resume_point(out_dir: Path, identity: dict[str, Any], resume: bool) -> Path | None:
    """The checkpoint a run continues from, None for a fresh run; refuses, before anything is
    written, a fresh run into an output holding checkpoints, a --resume with nothing to resume,
    a resume whose config, base or data changed (check_identity), and a newest checkpoint whose
    adapter weights cannot be read."""
    checkpoints = out_dir / CHECKPOINTS_SUBDIR
    found = complete_checkpoints(checkpoints)
    if found and not resume:
        raise TrainError(
            f"{out_dir}: holds checkpoints of an earlier run (newest {found[-1].name}); pass --resume "
            "(resume=True) to continue it, or set another output directory"
        )
    if not found:
        if resume:
            raise TrainError(
                f"{out_dir}: --resume (resume=True) was given but there is no complete checkpoint to resume "
                f"({checkpoints}/step-N with a {STATE_NAME}); drop --resume (resume=False) to start a fresh run"
            )
        return None
    check_identity(found[-1], read_checkpoint_state(found[-1])[1], identity)
    weights = found[-1] / ADAPTER_SUBDIR / ADAPTER_WEIGHTS
    try:  # the header and sizes only: a damaged checkpoint is refused before the run rewrites its files
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except UNREADABLE_WEIGHTS as exc:
        raise _unreadable(found[-1], exc) from exc
    return found[-1]


def _unreadable(path: Path, exc: Exception) -> TrainError:
    return TrainError(
        f"{path / ADAPTER_SUBDIR / ADAPTER_WEIGHTS}: cannot read the checkpoint's adapter ({exc}); delete {path} "
        "to resume from the checkpoint before it, or train without --resume into a new output"
    )


def check_identity(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a run whose config, base or data changed; list every difference."""
    before, after = _flatten(saved), _flatten(current)
    diffs = [
        f"{key}: checkpoint has {before.get(key, '(absent)')!r}, now {after.get(key, '(absent)')!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    if diffs:
        lines = "\n".join(f"  - {d}" for d in diffs)
        raise ResumeRefused(
            f"{path}: cannot resume, the run changed since this checkpoint:\n{lines}\n"
            "restore the original settings, or start a fresh run in another output directory"
        )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def load_checkpoint(
    path: Path,
    model: PeftModel,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    rank: int = 0,
) -> LoopState:
    """Restore weights, optimizer, scheduler and this process's RNG; return the loop position."""
    try:
        weights = load_file(str(path / ADAPTER_SUBDIR / ADAPTER_WEIGHTS))
    except UNREADABLE_WEIGHTS as exc:
        raise _unreadable(path, exc) from exc
    unexpected = getattr(set_peft_model_state_dict(model, weights), "unexpected_keys", [])
    if unexpected:
        raise TrainError(f"{path}: adapter weights do not match the model (unexpected: {', '.join(unexpected[:3])})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_states = json.loads((path / "rng.json").read_text())
    set_rng_state(rng_states[rank] if rank < len(rng_states) else rng_states[0])
    state, _ = read_checkpoint_state(path)
    return state
