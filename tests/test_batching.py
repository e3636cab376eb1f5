"""train.grad_accum=auto: optimizer steps sized to the data (loraforge.batching)."""

from __future__ import annotations

from loraforge.batching import (
    MAX_EXAMPLES_PER_STEP,
    MIN_EXAMPLES_PER_STEP,
    STEPS_PER_EPOCH,
    step_size,
    target_examples_per_step,
)


def test_small_set_gets_about_fifty_steps_an_epoch_not_a_handful() -> None:
    # 400 short rows (360 after holding out 10%), packed 2.5 examples a row: the old fixed 16 rows a
    # step made 9 steps an epoch; the rule makes ~45.
    step = step_size(examples=360, rows=144, micro_batch_size=4, grad_accum="auto")
    assert MIN_EXAMPLES_PER_STEP <= step.examples_per_step <= 2 * MIN_EXAMPLES_PER_STEP
    assert step.steps(rows=144, epochs=1.0) >= 36
    assert step_size(360, 144, 4, 4).steps(rows=144, epochs=1.0) <= 9


def test_packing_counts_examples_not_rows() -> None:
    one_a_row = step_size(examples=3200, rows=3200, micro_batch_size=4, grad_accum="auto")
    four_a_row = step_size(examples=3200, rows=800, micro_batch_size=4, grad_accum="auto")
    assert one_a_row.examples_per_step == four_a_row.examples_per_step == 64
    assert one_a_row.rows_per_step == 4 * four_a_row.rows_per_step


def test_large_set_is_capped_at_the_recipes_batch() -> None:
    assert target_examples_per_step(1_000_000) == MAX_EXAMPLES_PER_STEP
    assert target_examples_per_step(10) == MIN_EXAMPLES_PER_STEP
    assert target_examples_per_step(STEPS_PER_EPOCH * 20) == 20


def test_micro_batch_shrinks_when_a_step_needs_fewer_rows() -> None:
    step = step_size(examples=200, rows=50, micro_batch_size=4, grad_accum="auto")  # 4 examples a row
    assert (step.micro_batch_size, step.grad_accum) == (2, 1)


def test_integer_grad_accum_is_kept_as_set() -> None:
    step = step_size(examples=360, rows=144, micro_batch_size=4, grad_accum=3)
    assert (step.micro_batch_size, step.grad_accum, step.rule) == (4, 3, "set")


def test_processes_split_the_rows_of_a_step() -> None:
    alone = step_size(examples=6400, rows=6400, micro_batch_size=4, grad_accum="auto")
    four = step_size(examples=6400, rows=6400, micro_batch_size=4, grad_accum="auto", processes=4)
    assert alone.rows_per_step == 4 * four.rows_per_step
