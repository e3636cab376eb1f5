"""How many examples one optimizer step holds: the rule behind `train.grad_accum: auto`.

The recipe's effective batch of 32-128 sequences is a large-set figure: on a few hundred rows it
leaves a handful of optimizer steps, and the adapter barely moves (400 short rows at 16 packed
rows a step made 18 steps and reached 40% of its golden rows, where a plain loop at 8 rows a step
made 90 steps and reached 93%). So the step grows with the data instead: about STEPS_PER_EPOCH
optimizer steps an epoch, never fewer than MIN_EXAMPLES_PER_STEP examples a step (smaller steps
are noise) nor more than MAX_EXAMPLES_PER_STEP (the recipe's large-set batch). Packing puts
several examples in one row, so the rule counts examples, not rows: rows a step is the example
target divided by the examples a packed row holds on average.

Shared by training (pipeline) and `loraforge plan`, so the plan shows the steps training runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STEPS_PER_EPOCH = 50  # ~50 updates an epoch learn a few-hundred-row task at lr 2e-4 (docs/recipe.md)
MIN_EXAMPLES_PER_STEP = 8  # below 8 examples a step the gradient is mostly one row's noise
MAX_EXAMPLES_PER_STEP = 128  # the recipe's upper batch; past ~6,400 examples an epoch, steps grow instead


@dataclass(frozen=True)
class StepSize:
    """One optimizer step: `micro_batch_size` rows a forward, `grad_accum` forwards, per process."""

    micro_batch_size: int
    grad_accum: int
    examples_per_row: float  # examples in one training row (1.0 without packing)
    rule: str  # "auto" or "set": whether the rule chose grad_accum or the config did

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum

    @property
    def examples_per_step(self) -> float:
        return self.rows_per_step * self.examples_per_row

    def steps(self, rows: int, epochs: float, processes: int = 1) -> int:
        """Optimizer steps for `epochs` passes over `rows` training rows (as the loop counts them)."""
        micro_per_epoch = math.ceil(rows / (self.micro_batch_size * processes))
        return math.ceil(max(1, round(epochs * micro_per_epoch)) / self.grad_accum)


def target_examples_per_step(examples: int) -> int:
    """Examples one step should hold for a set of `examples` training examples (task + replay)."""
    return max(MIN_EXAMPLES_PER_STEP, min(MAX_EXAMPLES_PER_STEP, round(examples / STEPS_PER_EPOCH)))


def step_size(examples: int, rows: int, micro_batch_size: int, grad_accum: int | str, processes: int = 1) -> StepSize:
    """The step for `examples` training examples packed into `rows` rows (equal without packing).

    With `grad_accum` an integer the config decides and only the figures are derived. With "auto",
    rows a step = target examples / examples a row, split into micro-batches of at most
    `micro_batch_size` rows (shrunk when one step needs fewer rows) over `processes` processes;
    rows are rounded up, so a step never holds fewer examples than the target.
    """
    per_row = examples / max(rows, 1)
    if isinstance(grad_accum, int):
        return StepSize(micro_batch_size, grad_accum, per_row, "set")
    rows_per_step = max(1, math.ceil(target_examples_per_step(examples) / per_row / processes - 1e-9))
    micro = min(micro_batch_size, rows_per_step)
    return StepSize(micro, max(1, round(rows_per_step / micro)), per_row, "auto")
