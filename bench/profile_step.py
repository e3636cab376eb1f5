"""Where one optimizer step of loraforge's loop (the bench's C arm) spends its time, by op kind, dtype
and shape: a torch.profiler trace of --steps steps after --warmup-steps untimed ones, on the bench's
rows (bench/common.py), summed into a markdown table.

  python bench/profile_step.py [--model DIR] [--precision auto|bf16|fp32] [--pack-len 256]
                               [--micro-batches row|step] [--steps 2] [--out FILE.md]

Each step runs the loop's own pieces in the loop's order (fused LoRA layers, TokenLossSum, AdamW from
build_optimizer, clip, step), with the phases forward, backward, clip and optimizer marked, so every
op's self time is charged to the phase that ran it. Times are self CPU time of the calling thread;
what a phase's wall time holds beyond its ops' self time is Python, dispatch and the profiler itself.
A step is also timed once without the profiler, so the profiler's own cost shows.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import LORA, LR, ROWS_PER_STEP, SEED, bench_rows, build_model, set_threads, tokenize
from torch.profiler import ProfilerActivity, profile, record_function

from loraforge.config import LoraSpec, TrainSpec
from loraforge.data import collate_packed, pack_examples
from loraforge.data.types import TokenizedExample
from loraforge.models import attach_lora
from loraforge.train import loss, resolve_base_dtype
from loraforge.train.batches import to_tensors
from loraforge.train.fused_lora import fuse_lora_layers
from loraforge.train.loss import TokenLossSum
from loraforge.train.optim import build_optimizer, trainable_parameters

PHASES = ("forward", "backward", "clip", "optimizer")
GEMMS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"}
ATTENTION = ("attention", "sdpa", "softmax")
CASTS = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "aten::empty_strided"}


@dataclass
class Bucket:
    ms: float = 0.0
    calls: int = 0
    flops: float = 0.0
    shapes: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def gemm_kind(shapes: list[list[int]], rank: int, vocab: int) -> tuple[str, float]:
    """frozen / lora / lm_head, and the FLOPs of one call, from an mm-family op's input shapes."""
    mats = [s for s in shapes if len(s) >= 2]
    if len(mats) < 2:
        return "gemm (other)", 0.0
    a, b = mats[-2], mats[-1]  # addmm: (bias, a, b); mm: (a, b); bmm: batched
    batch = a[0] if len(a) == 3 else 1
    m, k, n = a[-2], a[-1], b[-1]
    dims = {m, k, n}
    kind = "lm_head" if vocab in dims else "lora (rank dim)" if rank in dims else "frozen/attention"
    return kind, 2.0 * batch * m * k * n


def categorise(name: str, shapes: list[list[int]], rank: int, vocab: int) -> tuple[str, float]:
    if name in GEMMS:
        return gemm_kind(shapes, rank, vocab)
    low = name.lower()
    if any(word in low for word in ATTENTION):
        return "attention (sdpa)", 0.0
    if name in CASTS:
        return "copies and casts", 0.0
    if "foreach" in low or "adam" in low or "norm" in low and "clip" in low:
        return "optimizer/clip kernels", 0.0
    if "nll" in low or "cross_entropy" in low or "log_softmax" in low:
        return "loss (cross-entropy)", 0.0
    if "embedding" in low or "index" in low or "gather" in low or "scatter" in low:
        return "embedding/index", 0.0
    if "random" in low or "uniform" in low or "bernoulli" in low:
        return "dropout masks", 0.0
    if name.startswith("aten::"):
        return "elementwise/other aten", 0.0
    return "autograd/other", 0.0


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a PEFT-wrapped causal LM (the ModuleList holding most parameters)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))


def phase_of(event: Any) -> str | None:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in PHASES:
            return str(parent.name)
        parent = parent.cpu_parent
    return None


def main() -> None:
    from loraforge.models.base import resolve_base

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="model directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--pack-len", type=int, default=256)
    parser.add_argument("--micro-batches", default="row", choices=["row", "step"])
    parser.add_argument("--rows-per-step", type=int, default=ROWS_PER_STEP)
    parser.add_argument("--steps", type=int, default=2, help="profiled optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--timed-steps", type=int, default=3, help="steps timed without the profiler, after the warmup")
    parser.add_argument("--top", type=int, default=15, help="rows of the op x dtype x shape table")
    parser.add_argument("--plain-head", action="store_true", help="the head and loss unfused (before head_loss.py)")
    parser.add_argument("--dropout", type=float, default=LORA["dropout"])
    parser.add_argument("--compile", choices=["layers", "model"],
                        help="torch.compile each decoder layer (one graph shared) or the whole model")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    threads = set_threads()
    model_dir = args.model or str(resolve_base("smollm2-135m-instruct"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n = args.rows_per_step
    total = args.warmup_steps + args.timed_steps + args.steps
    examples = []
    for i, row in enumerate(bench_rows()[: total * n]):
        ids, labels = tokenize(tokenizer, row)
        examples.append(TokenizedExample(tuple(ids), tuple(labels), line=i + 1))
    pad = int(tokenizer.pad_token_id or 0)
    steps = []
    for s in range(total):
        members = examples[s * n : (s + 1) * n]
        rows = pack_examples(members, max(args.pack_len, max(len(m.input_ids) for m in members)), seed=SEED)
        groups = [[r] for r in rows] if args.micro_batches == "row" else [rows]
        steps.append([to_tensors(collate_packed(g, pad_token_id=pad)) for g in groups])
    dtype = resolve_base_dtype(args.precision, "cpu")
    base = build_model(model_dir, dtype, "cpu")
    torch.manual_seed(SEED)
    model = attach_lora(base, LoraSpec(r=LORA["r"], alpha=LORA["alpha"], dropout=args.dropout))
    if args.plain_head:
        loss.frozen_head = lambda _model: None  # TokenLossSum falls back to head_at_labels + F.cross_entropy
    fuse_lora_layers(model)
    if args.compile == "layers":
        for layer in decoder_layers(model):
            layer.compile(dynamic=True)
    elif args.compile == "model":
        model.compile(dynamic=True)
    loss_sum = TokenLossSum(model)
    spec = TrainSpec(epochs=1, lr=LR, weight_decay=0.0, micro_batch_size=1, grad_accum=1, max_grad_norm=1.0, seed=SEED)
    optimizer = build_optimizer(model, spec, None)
    model.train()

    def step(batches: list[dict[str, torch.Tensor]]) -> None:
        units = sum(TokenLossSum.units(b) for b in batches)
        for b in batches:
            with record_function("forward"):
                summed = loss_sum(**b)
            with record_function("backward"):
                (summed / units).backward()
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(trainable_parameters(model), 1.0)
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for s in range(args.warmup_steps):
        step(steps[s])
    print(f"{args.warmup_steps} warmup steps: {time.perf_counter() - started:.1f} s", flush=True)
    first, last = args.warmup_steps, args.warmup_steps + args.timed_steps
    started = time.perf_counter()
    for batches in steps[first:last]:
        step(batches)
    unprofiled = time.perf_counter() - started
    real = sum(len(m.input_ids) for m in examples[first * n : last * n])  # padding excluded
    profiled_steps = steps[last:]
    tokens = sum(int(b["input_ids"].numel()) for s in profiled_steps for b in s)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        for batches in profiled_steps:
            step(batches)
        wall = time.perf_counter() - started
    print(report(prof, args, threads, dtype, tokens, wall, (unprofiled, real), model.config.vocab_size))


def report(prof: Any, args: argparse.Namespace, threads: int, dtype: torch.dtype, tokens: int, wall: float,
           unprofiled: tuple[float, int], vocab: int) -> str:  # fmt: skip
    per_step = 1000.0 / args.steps
    phases: dict[str, float] = defaultdict(float)
    buckets: dict[tuple[str, str], Bucket] = defaultdict(Bucket)
    ops: dict[tuple[str, str, str], Bucket] = defaultdict(Bucket)
    for event in prof.events():
        if event.name in PHASES:
            phases[event.name] += event.cpu_time_total / 1e3
            continue
        phase = phase_of(event)
        if phase is None or event.self_cpu_time_total == 0:
            continue
        shapes = [list(s) for s in event.input_shapes]
        dtypes = sorted({d for d in (event.input_dtypes or []) if d})
        kind, flops = categorise(event.name, shapes, LORA["r"], vocab)
        ms = event.self_cpu_time_total / 1e3
        bucket = buckets[(phase, kind)]
        bucket.ms, bucket.calls, bucket.flops = bucket.ms + ms, bucket.calls + 1, bucket.flops + flops
        op = ops[(event.name, ",".join(d.replace("c10::", "") for d in dtypes), kind)]
        op.ms, op.calls, op.flops = op.ms + ms, op.calls + 1, op.flops + flops
        op.shapes[str(shapes[:3])] += ms
    step_ms = wall * per_step
    lines = [
        f"`python bench/profile_step.py --precision {args.precision} --pack-len {args.pack_len} "
        f"--micro-batches {args.micro_batches} --steps {args.steps} --dropout {args.dropout}"
        f"{' --plain-head' if args.plain_head else ''}`: {threads} threads, base {str(dtype)[6:]}, "
        f"{tokens / args.steps:.0f} token slots a step; a step takes {step_ms:.0f} ms profiled, "
        f"{unprofiled[0] * 1000 / args.timed_steps:.0f} ms without it "
        f"(**{unprofiled[1] / unprofiled[0]:.0f} real tokens/s** over {args.timed_steps} steps)",
        "",
        "| phase | op kind | ms a step | share of step | calls | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for phase in PHASES:
        rows = sorted(((k, b) for (p, k), b in buckets.items() if p == phase), key=lambda kb: -kb[1].ms)
        accounted = sum(b.ms for _, b in rows)
        for kind, b in rows:
            rate = f"{b.flops / (b.ms / 1e3) / 1e9:.0f}" if b.flops else ""
            lines.append(f"| {phase} | {kind} | {b.ms * per_step / 1000:.1f} | {b.ms / (wall * 1000):.1%} | "
                         f"{b.calls // args.steps} | {rate} |")  # fmt: skip
        rest = phases[phase] - accounted
        lines.append(f"| {phase} | Python, dispatch, profiler (wall - op self time) | {rest * per_step / 1000:.1f} | "
                     f"{rest / (wall * 1000):.1%} | | |")  # fmt: skip
    between = wall * 1000 - sum(phases.values())
    lines.append(f"| - | between phases | {between * per_step / 1000:.1f} | {between / (wall * 1000):.1%} | | |")
    lines += ["", f"Top {args.top} ops (self time, all phases):", "",
              "| op | dtypes | kind | ms a step | calls | GFLOP/s | heaviest shapes |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, dtypes, kind), b in sorted(ops.items(), key=lambda kv: -kv[1].ms)[: args.top]:
        rate = f"{b.flops / (b.ms / 1e3) / 1e9:.0f}" if b.flops else ""
        shape = max(b.shapes.items(), key=lambda kv: kv[1])[0]
        lines.append(f"| {name} | {dtypes} | {kind} | {b.ms * per_step / 1000:.1f} | {b.calls // args.steps} | "
                     f"{rate} | {shape} |")  # fmt: skip
    text = "\n".join(lines)
    if args.out:
        from loraforge.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return text


if __name__ == "__main__":
    main()
