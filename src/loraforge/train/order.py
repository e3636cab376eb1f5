"""A row order whose every prefix covers the data evenly (train.order=balanced).

A run shorter than an epoch trains on a prefix of the epoch's order. Under a random permutation
that prefix's mix drifts with the seed: in the demo's 127 of 421 rows, one seed saw 41% `low`
urgency answers against 33% in the data and none of three of its issue phrasings, another 26%
`medium`. Herding (Welling, "Herding dynamical weights to learn", ICML 2009) picks rows greedily
so that the running sum of their features tracks the data's mean: each prefix's counts stay
within a bounded distance of proportional, against a distance that grows like sqrt(prefix) for a
random order. A row's features are the token n-grams it contains that at least two rows share,
so phrasings, answer labels and replay rows are balanced alike, and n-grams unique to one row
(ids, names, typos) do not pull. The seed permutes the candidates, which settles ties.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

NGRAM = 3  # token trigrams: long enough to tell phrasings and label values apart, short enough to recur
MIN_ROWS = 2  # an n-gram in one row only says nothing about the others


def ngram_features(rows: Sequence[Any], n: int = NGRAM, min_rows: int = MIN_ROWS) -> torch.Tensor:
    """(rows, features) 0/1: which shared token n-grams each row's input_ids contain."""
    grams = [set(zip(*(tuple(row.input_ids)[i:] for i in range(n)), strict=False)) for row in rows]
    shared = Counter(gram for row_grams in grams for gram in row_grams)
    column = {gram: j for j, gram in enumerate(sorted(g for g, c in shared.items() if c >= min_rows))}
    features = torch.zeros(len(rows), len(column))
    for i, row_grams in enumerate(grams):
        features[i, [column[g] for g in row_grams if g in column]] = 1.0
    return features


def balanced_order(rows: Sequence[Any], seed: int) -> list[int]:
    """Every row index once, each prefix's n-gram counts as near the data's proportions as the
    greedy herding step gets them; deterministic for a seed."""
    features = ngram_features(rows)
    candidates = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    features = features[candidates]
    mean = features.mean(dim=0)
    weights = mean.clone()  # what the prefix still lacks, plus one row's worth of the mean
    left = torch.ones(len(rows), dtype=torch.bool)
    order: list[int] = []
    for _ in range(len(rows)):
        scores = (features @ weights).masked_fill(~left, float("-inf"))
        pick = int(scores.argmax())  # first maximum: the seeded permutation settles ties
        order.append(int(candidates[pick]))
        left[pick] = False
        weights += mean - features[pick]
    return order
