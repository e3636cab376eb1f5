"""C: loraforge's own loop, `loraforge.train.train`, on its real path: frozen base in the dtype
precision auto picks for the device (bf16 on a GPU or an avx512_bf16 CPU, else fp32), fp32 adapters,
packed rows, fused LoRA layers, loss and output head only at loss positions.

Each optimizer step's --rows-per-step rows are packed (first-fit) into rows of at most --pack-len
tokens, so every arm sees the same rows per step in the same order. On a CPU each packed row is its
own micro-batch (`train.micro_batch_size: 1`, rows of 256): peak memory follows one row, not the
step, and no row is padded. On a GPU the step's rows form one micro-batch (bigger kernels). Only
BatchPlan's row grouping is replaced; the loop is the one `loraforge train` runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import (
    LORA,
    LR,
    SEED,
    WARMUP_RATIO,
    arm_parser,
    bench_rows,
    build_model,
    load_bench_tokenizer,
    peak_memory_bytes,
    result_line,
    set_threads,
    tokenize,
)

from loraforge.config import LoraSpec, TrainSpec
from loraforge.data import collate_packed, pack_examples
from loraforge.data.types import PackedSequence, TokenizedExample
from loraforge.models import attach_lora
from loraforge.train import BatchPlan, read_metrics, resolve_base_dtype, train
from loraforge.train.batches import Batch, to_tensors


@dataclass
class StepGroups(BatchPlan):
    """Each optimizer step gets the packed rows of that step's examples, in order: all of them in one
    micro-batch, or (split) each packed row as its own micro-batch, as `train.micro_batch_size: 1`
    does, so a micro-batch holds at most --pack-len tokens and no padding. The loop normalises the
    loss by the step's loss tokens either way, so the split changes memory, not the math."""

    split: bool = False

    def train_batch(self, micro_index: int) -> Batch:
        return to_tensors(self.collate(self.train_rows[micro_index]))

    def step_batches(self, first: int, last: int) -> list[Batch]:
        if not self.split:
            return super().step_batches(first, last)
        return [to_tensors(self.collate([row])) for i in range(first, last) for row in self.train_rows[i]]

    def eval_batches(self) -> list[Batch]:
        return [to_tensors(self.collate(group)) for group in self.eval_rows]


def step_groups(examples: list[TokenizedExample], steps: int, rows_per_step: int, pack_len: int) -> list[Any]:
    groups: list[list[PackedSequence]] = []
    for step in range(steps):
        members = examples[step * rows_per_step : (step + 1) * rows_per_step]
        groups.append(pack_examples(members, max(pack_len, max(len(m.input_ids) for m in members)), seed=SEED))
    return groups


def main() -> None:
    parser = arm_parser()
    parser.add_argument("--pack-len", type=int, help="packed row length, tokens (default: 256 on a CPU, 512 on a GPU)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--micro-batches", choices=["row", "step"],
                        help="row: each packed row is its own micro-batch, so peak memory follows --pack-len, not "
                             "the step, and no row is padded (the CPU default); step: all of a step's packed rows in "
                             "one micro-batch, padded to the longest (the GPU default: bigger kernels)")  # fmt: skip
    args = parser.parse_args()
    on_cpu = args.device == "cpu"
    pack_len = args.pack_len or (256 if on_cpu else 512)
    set_threads()
    total_steps = args.steps + args.warmup_steps
    n = args.rows_per_step
    tokenizer = load_bench_tokenizer(args)
    examples = []
    for i, row in enumerate(bench_rows()[: (total_steps + 1) * n]):
        ids, labels = tokenize(tokenizer, row)
        examples.append(TokenizedExample(tuple(ids), tuple(labels), line=i + 1))
    groups = step_groups(examples, total_steps + 1, n, pack_len)
    pad_id = int(tokenizer.pad_token_id or 0)
    split = (args.micro_batches or ("row" if on_cpu else "step")) == "row"
    plan = StepGroups(groups[:total_steps], groups[total_steps:], partial(collate_packed, pad_token_id=pad_id),
                      micro_batch_size=1, seed=SEED, split=split)  # fmt: skip
    base = build_model(args.model, resolve_base_dtype(args.precision, args.device), args.device)
    torch.manual_seed(SEED)
    model = attach_lora(base, LoraSpec(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"]))
    spec = TrainSpec(epochs=1, lr=LR, scheduler="cosine", warmup_ratio=WARMUP_RATIO, weight_decay=0.0,
                     micro_batch_size=1, grad_accum=1, max_grad_norm=1.0, seed=SEED, eval_every=100.0)  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        train(model, plan, spec, Path(out), identity={"bench": "C"})
        records = [r for r in read_metrics(Path(out) / "metrics.jsonl") if r.get("event") == "train"]
    # the loop's tokens_per_s is cumulative over its step time (eval and checkpoints excluded) and
    # counts padded slots; turn it back into seconds per step, then count real tokens only
    slots = [sum(b["input_ids"].numel() for b in plan.step_batches(s, s + 1)) for s in range(total_steps)]
    elapsed = [sum(slots[: r["step"]]) / r["tokens_per_s"] for r in records]
    seconds = elapsed[-1] - elapsed[args.warmup_steps - 1] if args.warmup_steps else elapsed[-1]
    real = sum(len(ex.input_ids) for ex in examples[args.warmup_steps * n : total_steps * n])
    result_line({"arm": "C", "tokens": real, "seconds": seconds, "tokens_per_s": real / seconds, "steps": args.steps,
                 "peak_mem": peak_memory_bytes(args.device), "losses": [r["loss"] for r in records]})  # fmt: skip


if __name__ == "__main__":
    main()
