"""Two CPU processes (DDP over gloo, through `accelerate launch`) follow the single-process loss curve,
with and without the replay KL (whose base forward runs inside the DDP-wrapped loss module).

The worker is this file run as a script, once plainly and once under `accelerate launch`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SPEC = dict(lr=5e-3, warmup_ratio=0.0, grad_accum=2, max_steps=4, eval_every=0.5, precision="fp32")
GLOBAL_MICRO_BATCH = 4  # rows per micro-batch across all processes


def run_worker(base_dir: Path, out: Path, replay_kl: float | None, dropout: float = 0.0) -> None:
    """Train with GLOBAL_MICRO_BATCH split over however many processes were launched; with replay_kl,
    every third row is a replay row. With dropout, every train row is the same example, so every
    process draws its masks in the same shapes and only the seed can make them differ."""
    from dataclasses import replace
    from functools import partial

    import torch
    from accelerate import Accelerator
    from train_rows import tiny_examples, tiny_plan
    from transformers import set_seed

    from loraforge.config import LoraSpec, TrainSpec
    from loraforge.data import collate_padded
    from loraforge.models import attach_lora, load_base
    from loraforge.train import BatchPlan, train

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(0)
    model = attach_lora(load_base(str(base_dir)).model, LoraSpec(r=4, alpha=8, dropout=dropout))
    micro = GLOBAL_MICRO_BATCH // world
    plan = tiny_plan(base_dir, n_train=32, micro=micro, world_size=world, rank=rank)
    if replay_kl is not None:
        rows = tiny_examples(base_dir, 38)
        tagged = [replace(ex, replay=i % 3 == 0) for i, ex in enumerate(rows[:32])]
        collate = partial(collate_padded, anchor=True)
        plan = BatchPlan(tagged, rows[32:], collate, micro_batch_size=micro, seed=0, world_size=world, rank=rank)
    if dropout:
        same = [plan.train_rows[0]] * len(plan.train_rows)
        plan = BatchPlan(same, plan.eval_rows, plan.collate, micro, seed=0, world_size=world, rank=rank)
    spec = TrainSpec(**{**SPEC, "micro_batch_size": micro, "replay_kl": replay_kl})
    if dropout:
        _record_first_mask(out / f"mask-{rank}.json")
    result = train(model, plan, spec, out, identity={}, accelerator=accelerator)
    if accelerator.is_main_process:
        records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
        kls = [r["replay_kl"] for r in records if "replay_kl" in r]
        losses = {"train": result.train_losses, "eval": result.eval_losses, "world": world, "replay_kl": kls}
        (out / "losses.json").write_text(json.dumps(losses))


def _record_first_mask(path: Path) -> None:
    """Write the first dropout mask the training forward draws (train.fused_lora.keep_mask, which
    the fused LoRA layer calls for its dropout): True where an element is kept."""
    from loraforge.train import fused_lora

    draw = fused_lora.keep_mask

    def recording(shape: Any, p: float, device: Any) -> Any:
        keep, probability = draw(shape, p, device)
        if not path.exists():
            path.write_text(json.dumps(keep.flatten().tolist()))
        return keep, probability

    fused_lora.keep_mask = recording


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(
    prefix: list[str], base_dir: Path, out: Path, replay_kl: float | None, dropout: float = 0.0
) -> dict[str, Any]:
    paths = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    args = [*prefix, __file__, str(base_dir), str(out), str(replay_kl), str(dropout)]
    done = subprocess.run(args, env=env, capture_output=True, timeout=400)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads((out / "losses.json").read_text())


@pytest.mark.parametrize("replay_kl", [None, 0.5])
def test_two_processes_match_one_with_the_same_global_batch(
    replay_kl: float | None, tiny_base_dir: Path, tmp_path: Path
) -> None:
    single = _launch([sys.executable], tiny_base_dir, tmp_path / "one", replay_kl)
    double = _launch(_two_processes(), tiny_base_dir, tmp_path / "two", replay_kl)
    assert double["world"] == 2
    for curve in ("train", "eval"):
        ours, theirs = [loss for _, loss in single[curve]], [loss for _, loss in double[curve]]
        assert ours == pytest.approx(theirs, rel=1e-4)
    assert len(single["replay_kl"]) == (0 if replay_kl is None else SPEC["max_steps"])
    assert single["replay_kl"] == pytest.approx(double["replay_kl"], rel=1e-4, abs=1e-6)
    if replay_kl is not None:
        assert single["replay_kl"][-1] > 0


def _two_processes() -> list[str]:
    # --multi_gpu selects accelerate's torchrun launcher; without GPUs the processes join over gloo
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return accelerate + ["--main_process_port", str(_free_port())]


def test_each_process_draws_its_own_dropout_masks(tiny_base_dir: Path, tmp_path: Path) -> None:
    """The adapter init is the same on every process; the RNG that draws dropout masks is not
    (seed + rank): fed the same rows, two processes drop different units, and each resumes its own
    RNG stream from the checkpoint."""
    _launch(_two_processes(), tiny_base_dir, tmp_path, None, dropout=0.1)
    masks = [json.loads((tmp_path / f"mask-{rank}.json").read_text()) for rank in (0, 1)]
    assert len(masks[0]) == len(masks[1]) > 1000
    dropped = [1 - sum(mask) / len(mask) for mask in masks]
    assert all(0.05 < share < 0.15 for share in dropped), dropped  # dropout 0.1 ran on each process
    assert masks[0] != masks[1]
    newest = max((tmp_path / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    per_rank = json.loads((newest / "rng.json").read_text())
    assert len(per_rank) == 2 and per_rank[0]["torch"] != per_rank[1]["torch"]


if __name__ == "__main__":
    kl = None if sys.argv[3] == "None" else float(sys.argv[3])
    run_worker(Path(sys.argv[1]), Path(sys.argv[2]), kl, float(sys.argv[4]))
