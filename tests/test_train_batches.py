"""Batch order for training (the tiny rows and plan it uses are in train_rows.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from train_rows import tiny_plan

from loraforge.config import TrainSpec
from loraforge.train import plan_steps


def test_epoch_order_is_a_function_of_seed_and_epoch(tiny_base_dir: Path) -> None:
    first, second = tiny_plan(tiny_base_dir), tiny_plan(tiny_base_dir)
    assert first.epoch_order(1) == second.epoch_order(1)
    assert first.epoch_order(0) != first.epoch_order(1)


def test_two_processes_split_each_global_batch_between_them(tiny_base_dir: Path) -> None:
    single = tiny_plan(tiny_base_dir, micro=2)
    ranks = [tiny_plan(tiny_base_dir, micro=1, world_size=2, rank=r) for r in range(2)]
    whole = single.train_batch(3)["input_ids"]
    halves = [r.train_batch(3)["input_ids"] for r in ranks]
    for row, half in zip(whole, halves, strict=True):
        assert torch.equal(row[: half.shape[1]], half[0])


def test_eval_every_quarter_epoch_in_steps(tiny_base_dir: Path) -> None:
    plan = plan_steps(tiny_plan(tiny_base_dir, n_train=32, micro=2), TrainSpec(epochs=2, grad_accum=2))
    assert (plan.total_steps, plan.eval_every_steps) == (16, 2)
