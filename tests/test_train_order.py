"""train.order=balanced: an epoch order whose every prefix holds the data's mix."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from train_rows import tiny_plan

from loraforge.config import TrainSpec
from loraforge.train.order import balanced_order, ngram_features

KIND_SHARES = {"a": 3, "b": 2, "c": 1}  # rows of each kind per 6 rows


@dataclass(frozen=True)
class Row:
    input_ids: tuple[int, ...]
    kind: str = ""


def mixed_rows(n: int, seed: int) -> list[Row]:
    """Rows in KIND_SHARES proportions, in random order: a shared header, the kind's own three
    tokens, then tokens no other row has (like ids and names)."""
    rng = random.Random(seed)
    kinds = [kind for kind, share in KIND_SHARES.items() for _ in range(share * n // 6)]
    rng.shuffle(kinds)
    marker = {"a": (10, 11, 12), "b": (20, 21, 22), "c": (30, 31, 32)}
    return [
        Row((1, 2, 3, *marker[kind], *(1000 + 10 * i + j for j in range(rng.randint(2, 6)))), kind)
        for i, kind in enumerate(kinds)
    ]


def worst_prefix_gap(rows: list[Row], order: list[int]) -> float:
    """The largest distance, over prefixes and kinds, between a kind's rows in the prefix and its share."""
    counts = dict.fromkeys(KIND_SHARES, 0)
    worst = 0.0
    for seen, index in enumerate(order, start=1):
        counts[rows[index].kind] += 1
        for kind, share in KIND_SHARES.items():
            worst = max(worst, abs(counts[kind] - seen * share / 6))
    return worst


def test_balanced_order_keeps_every_prefix_within_a_row_of_the_mix() -> None:
    for seed in range(3):
        rows = mixed_rows(120, seed)
        shuffled = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
        assert worst_prefix_gap(rows, balanced_order(rows, seed)) <= 1.0
        assert worst_prefix_gap(rows, shuffled) > 1.0


def test_balanced_order_is_every_row_once_and_the_same_for_a_seed() -> None:
    rows = mixed_rows(60, 0)
    order = balanced_order(rows, 7)
    assert sorted(order) == list(range(len(rows)))
    assert balanced_order(rows, 7) == order


def test_ngrams_only_one_row_holds_are_not_features() -> None:
    rows = [Row(tuple(range(100 * i, 100 * i + 8))) for i in range(5)]
    assert ngram_features(rows).shape == (5, 0)
    assert sorted(balanced_order(rows, 0)) == list(range(5))


def test_a_balanced_plan_orders_each_epoch_the_same_way_on_resume(tiny_base_dir: Path) -> None:
    first, again = tiny_plan(tiny_base_dir, order="balanced"), tiny_plan(tiny_base_dir, order="balanced")
    assert first.epoch_order(1) == again.epoch_order(1)
    assert sorted(first.epoch_order(0)) == list(range(len(first.train_rows)))
    assert first.epoch_order(0) != tiny_plan(tiny_base_dir).epoch_order(0)


def test_train_order_names_the_orders_it_knows() -> None:
    assert TrainSpec(order="balanced").order == "balanced"
    with pytest.raises(ValidationError, match="order"):
        TrainSpec(order="sorted")
