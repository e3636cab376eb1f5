"""`make bench`: the training-speed benchmark on this machine, printed as a markdown table.

One process per arm, arms interleaved and the order rotated each round, repeated --repeats times;
on a CPU inside a budget (--budget-s, default 720 s, so `make bench` ends within 15 minutes): every
arm runs once, later rounds drop runs of the slowest arm while the rest would not fit, and B0/B1
stop timing steps past their share of the budget; the table says how many runs and timed steps
each arm got. Median and range of real (non-pad) tokens/s and peak memory (RSS on the CPU,
max_memory_allocated on a GPU), ratios of medians, and MFU against two peaks measured at the start
of this run: the fastest 2048^3 (GPU: 8192^3) GEMM, and the GEMM rate at the model's own frozen matmul
and head shapes with C's micro-batch of tokens (bench/common.py shape_peak_flops).
Arms: B0 plain PEFT fp32 padded, B1 TRL SFTTrainer defaults, B2 TRL padding-free + Liger (GPU),
C loraforge. See docs/PERFORMANCE.md ("Training speed") for what each arm does.

    python bench/run.py                                   # CPU: SmolLM2-135M-Instruct's weights, B0,B1,C
    python bench/run.py --device cuda --tokenizer DIR \
        --models random:llama-8b@3,random:llama-1b@2      # GPU: random-weight shapes, B1,B2,C
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from common import (
    LORA,
    RANDOM,
    ROWS_PER_STEP,
    bench_rows,
    flops_per_token,
    gemm_peak_flops,
    length_stats,
    model_config,
    set_threads,
    shape_peak_flops,
    step_rows,
    tokenize,
)

HERE = Path(__file__).resolve().parent
ARMS = {"B0": ["arm_peft.py"], "B1": ["arm_trl.py"], "B2": ["arm_trl.py", "--fast"], "C": ["arm_loraforge.py"]}
BASE = "smollm2-135m-instruct"
CPU_BUDGET_S = 720  # `make bench` from a fresh clone (its ~2.5 min setup included) ends within 15 minutes
STOPS_EARLY = {"B0", "B1", "B2"}  # arms that take --max-seconds (C runs its --steps)


@dataclass
class Budget:
    """Seconds left for one model's arm runs, and which later runs still fit (None: no budget)."""

    seconds: float | None
    planned_runs: int
    started: float = field(default_factory=time.perf_counter)
    dropped: dict[str, int] = field(default_factory=dict)

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - (time.perf_counter() - self.started)

    def share(self) -> float:
        """Timed seconds an arm that stops early gets per run (0: no limit)."""
        return 0.0 if self.seconds is None else self.seconds / self.planned_runs

    def trim(self, runs_left: dict[str, int], last_wall: dict[str, float]) -> None:
        """Drop one run at a time of the arm whose last run was slowest until the projected time fits."""
        while sum(n * last_wall.get(arm, 0.0) for arm, n in runs_left.items()) > self.left():
            slowest = max((a for a, n in runs_left.items() if n), key=lambda a: last_wall.get(a, 0.0), default=None)
            if slowest is None:
                return
            runs_left[slowest] -= 1
            self.dropped[slowest] = self.dropped.get(slowest, 0) + 1


def run_arm(arm: str, model: str, args: argparse.Namespace, max_seconds: float) -> tuple[dict[str, Any] | None, float]:
    """One arm in its own process: its result line (None when it failed or timed out) and its wall seconds."""
    command = [sys.executable, str(HERE / ARMS[arm][0]), *ARMS[arm][1:], "--model", model, "--device", args.device,
               "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
               "--rows-per-step", str(args.rows_per_step)]  # fmt: skip
    if args.tokenizer:
        command += ["--tokenizer", str(args.tokenizer)]
    if arm == "C" and args.pack_len:
        command += ["--pack-len", str(args.pack_len)]
    if arm == "B2" and args.no_liger:
        command.append("--no-liger")
    if arm in STOPS_EARLY and max_seconds:
        command += ["--max-seconds", f"{max_seconds:.0f}"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.arm_timeout_s, cwd=HERE)
    except subprocess.TimeoutExpired:
        print(f"arm {arm} on {model}: over {args.arm_timeout_s} s, stopped", file=sys.stderr)
        return None, time.perf_counter() - started
    wall = time.perf_counter() - started
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["wall_s"] = wall
            return result, wall
    print(f"arm {arm} on {model} failed (exit {done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
    return None, wall


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measured_lengths(tokenizer: Any, args: argparse.Namespace) -> list[int]:
    steps = range(args.warmup_steps, args.warmup_steps + args.steps)
    rows = [r for s in steps for r in bench_rows()[step_rows(s, args.rows_per_step)]]
    return [len(tokenize(tokenizer, r)[0]) for r in rows]


def cpu_flags() -> str:
    """The CPU's vector extensions that decide the GEMM peak (bf16 is emulated without avx512_bf16/AMX)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def c_micro_batch_tokens(args: argparse.Namespace, lengths: list[int]) -> int:
    """Token slots of one of C's micro-batches: a packed row on a CPU, the step's packed rows on a GPU."""
    on_cpu = not args.device.startswith("cuda")
    pack_len = args.pack_len or (256 if on_cpu else 512)
    if on_cpu:
        return int(pack_len)
    mean = sum(lengths) / len(lengths)
    return int(pack_len * math.ceil(args.rows_per_step * mean / pack_len))


def summarise(results: dict[str, list[dict[str, Any]]], flops_token: float, peak: float,
              shape_peak: float) -> list[dict[str, Any]]:  # fmt: skip
    table = []
    for arm, runs in results.items():
        if not runs:
            continue
        speeds = [r["tokens_per_s"] for r in runs]
        memory = [r["peak_mem"] / 2**30 for r in runs]
        table.append({
            "arm": arm, "runs": len(runs),
            "tok_s": statistics.median(speeds), "tok_s_range": (min(speeds), max(speeds)),
            "mem_gib": statistics.median(memory), "mem_range": (min(memory), max(memory)),
            "steps": sum(r.get("steps", 0) for r in runs),
            "mfu": flops_token * statistics.median(speeds) / peak, "first_loss": runs[0]["losses"][0],
            "mfu_shapes": flops_token * statistics.median(speeds) / shape_peak,
        })  # fmt: skip
    return table


def render(table: list[dict[str, Any]], header: dict[str, Any], memory: str) -> str:
    by_arm = {row["arm"]: row for row in table}
    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", f"| arm | runs | timed steps | real tok/s (median) | range | {memory} GiB (median) | range | MFU "
              "| MFU (model shapes) | step-1 loss |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in table:
        lo, hi = row["tok_s_range"]
        mlo, mhi = row["mem_range"]
        lines.append(f"| {row['arm']} | {row['runs']} | {row['steps']} | {row['tok_s']:.0f} | {lo:.0f}-{hi:.0f} "
                     f"| {row['mem_gib']:.2f} "
                     f"| {mlo:.2f}-{mhi:.2f} | {row['mfu']:.1%} | {row['mfu_shapes']:.1%} "
                     f"| {row['first_loss']:.4f} |")  # fmt: skip
    lines.append("")
    if "C" in by_arm:
        for other in ("B0", "B1", "B2"):
            if other in by_arm:
                speed = by_arm["C"]["tok_s"] / by_arm[other]["tok_s"]
                ratio = by_arm["C"]["mem_gib"] / by_arm[other]["mem_gib"]
                lines.append(f"- C/{other}: {speed:.2f}x real tokens/s, {ratio:.2f}x {memory}")
    return "\n".join(lines)


def machine(device: str, threads: int) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads"
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name()} (CPU: {cpu})"
    return cpu


def versions() -> str:
    names = ("torch", "transformers", "peft", "trl", "accelerate", "liger_kernel", "loraforge")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def parse_models(text: str | None, repeats: int) -> list[tuple[str, int]]:
    """Models and repeats from "a@3,b" -> [(a, 3), (b, repeats)]; none given: SmolLM2-135M-Instruct's weights."""
    if not text:
        from loraforge.models.base import resolve_base

        return [(str(resolve_base(BASE)), repeats)]
    models = []
    for item in text.split(","):
        name, _, count = item.partition("@")
        models.append((name, int(count) if count else repeats))
    return models


def bench_model(model: str, repeats: int, arms: list[str], args: argparse.Namespace,
                peak: tuple[float, str], threads: int, out: Path | None, budget: Budget) -> str:  # fmt: skip
    from transformers import AutoTokenizer

    started = time.perf_counter()
    load_before = load_average()
    lengths = measured_lengths(AutoTokenizer.from_pretrained(str(args.tokenizer or model)), args)
    mean_context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    flops_token = flops_per_token(model_config(model), LORA["r"], mean_context)
    micro_tokens = c_micro_batch_tokens(args, lengths)
    shape_peak = shape_peak_flops(model_config(model), micro_tokens, peak[1], args.device)
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    runs_left, last_wall = dict.fromkeys(arms, repeats), {}
    for round_index in range(repeats):
        if round_index:  # the first round runs every arm whatever the budget
            budget.trim(runs_left, last_wall)
        order = arms[round_index % len(arms) :] + arms[: round_index % len(arms)]
        for arm in order:
            if not runs_left[arm]:
                continue
            runs_left[arm] -= 1
            result, last_wall[arm] = run_arm(arm, model, args, budget.share())
            if result is None:
                continue
            results[arm].append(result)
            if out is not None:
                with (out.parent / (out.name + ".runs.jsonl")).open("a") as log:
                    log.write(json.dumps({"model": model, **result}) + "\n")
            print(f"{Path(model).name} round {round_index + 1} {arm}: {result['tokens_per_s']:.0f} tok/s, "
                  f"{result['peak_mem'] / 2**30:.2f} GiB, {result['wall_s']:.0f} s, load {load_average()}",
                  flush=True)  # fmt: skip
    described = f"random weights, shape {model.removeprefix(RANDOM)}" if model.startswith(RANDOM) else Path(model).name
    header = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(args.device, threads),
        "versions": versions(),
        "model": f"{described}, LoRA r{LORA['r']} a{LORA['alpha']} all-linear",
        "data": f"{args.warmup_steps}+{args.steps} steps x {args.rows_per_step} rows; measured row tokens "
        + json.dumps({k: round(v) for k, v in length_stats(lengths).items()}),
        "GEMM peak": f"{peak[0] / 1e9:.0f} GFLOP/s {peak[1]} (measured at the start of this run)",
        "GEMM rate at the model's shapes": f"{shape_peak / 1e9:.0f} GFLOP/s {peak[1]} (its frozen matmuls and head "
        f"at {micro_tokens} tokens, C's micro-batch; the second MFU column)",
        "FLOPs per real token": f"{flops_token / 1e9:.2f} GFLOP",
        "load average": f"{load_before} at start, {load_average()} at end",
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    if budget.seconds is not None:
        dropped = ", ".join(f"{arm} {n}" for arm, n in budget.dropped.items()) or "none"
        header["budget"] = (f"{budget.seconds:.0f} s for this model's runs, {budget.share():.0f} timed s a B0/B1 run; "
                            f"runs dropped to fit: {dropped}")  # fmt: skip
    if not args.device.startswith("cuda"):
        header["cpu flags"] = cpu_flags()
    memory = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS"
    return render(summarise(results, flops_token, peak[0], shape_peak), header, memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", help="comma list of model dirs or random:SHAPE, each NAME[@REPEATS] "
                        "(default: SmolLM2-135M-Instruct's real weights)")  # fmt: skip
    parser.add_argument("--tokenizer", type=Path, help="tokenizer dir for random: models (default: SmolLM2's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps per arm run")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--rows-per-step", type=int, default=ROWS_PER_STEP)
    parser.add_argument("--pack-len", type=int, help="C's packed row length (default: 256 on a CPU, 512 on a GPU)")
    parser.add_argument("--arms", help="default: B0,B1,C on the CPU, B1,B2,C on a GPU")
    parser.add_argument("--no-liger", action="store_true", help="B2 without Liger (a CPU smoke run)")
    parser.add_argument("--arm-timeout-s", type=int, default=600)
    parser.add_argument(
        "--budget-s",
        type=float,
        help=f"seconds for the whole run (default {CPU_BUDGET_S} on a CPU, none on a GPU; 0: none)",
    )
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here, each run to OUT.runs.jsonl")
    args = parser.parse_args()
    from loraforge.files import write_text_atomic

    threads = set_threads()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.tokenizer is None and args.models and RANDOM in args.models:
        from loraforge.models.base import resolve_base

        args.tokenizer = resolve_base(BASE)
    arms = (args.arms or ("B1,B2,C" if args.device.startswith("cuda") else "B0,B1,C")).split(",")
    started = time.perf_counter()
    budget_s = args.budget_s
    if budget_s is None:
        budget_s = None if args.device.startswith("cuda") else CPU_BUDGET_S
    peak = gemm_peak_flops(args.device)
    print(f"GEMM peak: {peak[0] / 1e9:.0f} GFLOP/s {peak[1]}", flush=True)
    tables = []
    models = parse_models(args.models, args.repeats)
    for index, (model, repeats) in enumerate(models):
        left = budget_s - (time.perf_counter() - started) if budget_s else None  # split evenly over the models left
        budget = Budget(left / (len(models) - index) if left is not None else None, repeats * len(arms))
        tables.append(bench_model(model, repeats, arms, args, peak, threads, args.out, budget))
        print(tables[-1], flush=True)
        if args.out:
            write_text_atomic(args.out, "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
