"""The order micro-batches are seen in: a pure function of (seed, epoch, position).

Rows (packed sequences, or single examples when packing is off) are shuffled once per epoch
with a generator seeded by (seed, epoch), never by the global RNG (or, with train.order=balanced,
put in an order whose every prefix covers the data evenly: train.order), so a resumed run sees exactly
the batches the uninterrupted run would have seen. The data stage supplies the rows and the
collate function; this module only decides their order and which process gets which rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from loraforge.errors import TrainError
from loraforge.train.order import balanced_order

Batch = dict[str, torch.Tensor]
Collate = Callable[[Sequence[Any]], dict[str, Any]]


@dataclass
class BatchPlan:
    """Train and eval rows plus how to batch them. `world_size` > 1 shards each global micro-batch."""

    train_rows: Sequence[Any]
    eval_rows: Sequence[Any]
    collate: Collate
    micro_batch_size: int
    seed: int
    world_size: int = 1
    rank: int = 0
    order: Literal["shuffle", "balanced"] = "shuffle"  # train.order
    _epoch_cache: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.train_rows:
            raise TrainError("no training rows to train on; check data.train and the data report's drop counts")
        if not self.eval_rows:
            raise TrainError("no eval rows; set data.eval or a data.eval_fraction that holds out at least one row")

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch_size * self.world_size

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_rows) / self.global_micro_batch)

    def epoch_order(self, epoch: int) -> list[int]:
        """Row indices for one epoch; padded by wrapping when several processes need equal shares."""
        if epoch not in self._epoch_cache:
            epoch_seed = self.seed * 100_003 + epoch
            if self.order == "balanced":
                order = balanced_order(self.train_rows, epoch_seed)
            else:
                generator = torch.Generator().manual_seed(epoch_seed)
                order = torch.randperm(len(self.train_rows), generator=generator).tolist()
            short = self.micro_batches_per_epoch * self.global_micro_batch - len(order)
            if self.world_size > 1 and short:
                order += order[:short]  # like DistributedSampler: every process must run every step
            self._epoch_cache = {epoch: order}  # one epoch at a time is all the loop needs
        return self._epoch_cache[epoch]

    def train_batch(self, micro_index: int) -> Batch:
        """The micro-batch at global position `micro_index` (counting across epochs), this process's share."""
        epoch, within = divmod(micro_index, self.micro_batches_per_epoch)
        order = self.epoch_order(epoch)
        start = within * self.global_micro_batch + self.rank * self.micro_batch_size
        rows = [self.train_rows[i] for i in order[start : start + self.micro_batch_size]]
        return to_tensors(self.collate(rows))

    def step_batches(self, first: int, last: int) -> list[Batch]:
        """The micro-batches one optimizer step accumulates over: global positions first..last-1.
        A plan that groups rows by step itself (the benchmark's fixed rows per step) overrides this."""
        return [self.train_batch(i) for i in range(first, last)]

    def eval_batches(self) -> list[Batch]:
        """This process's share of the eval rows, in fixed order."""
        mine = list(self.eval_rows)[self.rank :: self.world_size]
        return [
            to_tensors(self.collate(mine[i : i + self.micro_batch_size]))
            for i in range(0, len(mine), self.micro_batch_size)
        ]


def to_tensors(batch: dict[str, Any]) -> Batch:
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in batch.items()}
