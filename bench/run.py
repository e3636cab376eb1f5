"""`make bench`: the training-speed benchmark on this machine, printed as a markdown table.

One process per arm (B0 plain PEFT fp32 padded, B1 TRL SFTTrainer defaults, C loraforge), arms
interleaved and the order rotated each round, repeated --repeats times; median and range of real
(non-pad) tokens/s and peak RSS, ratios of medians, and MFU against the fastest GEMM peak (bf16 or fp32)
measured at the start of this run. See docs/PERFORMANCE.md ("Training speed") for what each arm does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common import (
    LORA,
    ROWS_PER_STEP,
    bench_rows,
    flops_per_token,
    gemm_peak_flops,
    length_stats,
    set_threads,
    step_rows,
    tokenize,
)

HERE = Path(__file__).resolve().parent
ARMS = {"B0": "arm_peft.py", "B1": "arm_trl.py", "C": "arm_loraforge.py"}
BASE = "smollm2-135m-instruct"


def run_arm(arm: str, model_dir: Path, steps: int, warmup: int, timeout_s: int) -> dict[str, Any] | None:
    command = [sys.executable, str(HERE / ARMS[arm]), "--model-dir", str(model_dir),
               "--steps", str(steps), "--warmup-steps", str(warmup)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=HERE)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["wall_s"] = time.perf_counter() - started
            return result
    print(f"arm {arm} failed (exit {done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
    return None


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measured_lengths(tokenizer: Any, steps: int, warmup: int) -> list[int]:
    rows = [r for s in range(warmup, warmup + steps) for r in bench_rows()[step_rows(s)]]
    return [len(tokenize(tokenizer, r)[0]) for r in rows]


def cpu_flags() -> str:
    """The CPU's vector extensions that decide the GEMM peak (bf16 is emulated without avx512_bf16/AMX)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def summarise(results: dict[str, list[dict[str, Any]]], flops_token: float, peak: float) -> list[dict[str, Any]]:
    table = []
    for arm, runs in results.items():
        if not runs:
            continue
        speeds = [r["tokens_per_s"] for r in runs]
        rss = [r["peak_rss"] / 2**30 for r in runs]
        table.append({
            "arm": arm, "tok_s": statistics.median(speeds), "tok_s_range": (min(speeds), max(speeds)),
            "rss_gib": statistics.median(rss), "rss_range": (min(rss), max(rss)),
            "mfu": flops_token * statistics.median(speeds) / peak, "first_loss": runs[0]["losses"][0],
        })  # fmt: skip
    return table


def render(table: list[dict[str, Any]], header: dict[str, Any]) -> str:
    by_arm = {row["arm"]: row for row in table}
    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| arm | real tok/s (median) | range | peak RSS GiB (median) | range | MFU | step-1 loss |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in table:
        lo, hi = row["tok_s_range"]
        rlo, rhi = row["rss_range"]
        lines.append(f"| {row['arm']} | {row['tok_s']:.0f} | {lo:.0f}-{hi:.0f} | {row['rss_gib']:.2f} | "
                     f"{rlo:.2f}-{rhi:.2f} | {row['mfu']:.1%} | {row['first_loss']:.4f} |")  # fmt: skip
    lines.append("")
    if "C" in by_arm:
        for other in ("B0", "B1"):
            if other in by_arm:
                speed = by_arm["C"]["tok_s"] / by_arm[other]["tok_s"]
                memory = by_arm["C"]["rss_gib"] / by_arm[other]["rss_gib"]
                lines.append(f"- C/{other}: {speed:.2f}x real tokens/s, {memory:.2f}x peak RSS")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per arm run")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--arms", default="B0,B1,C")
    parser.add_argument("--arm-timeout-s", type=int, default=600)
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    from transformers import AutoConfig

    from loraforge.files import write_text_atomic
    from loraforge.models import load_tokenizer
    from loraforge.models.base import resolve_base

    started = time.perf_counter()
    threads = set_threads()
    model_dir = resolve_base(BASE)
    load_before = load_average()
    peak, peak_dtype = gemm_peak_flops()
    lengths = measured_lengths(load_tokenizer(BASE), args.steps, args.warmup_steps)
    mean_context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    flops_token = flops_per_token(AutoConfig.from_pretrained(model_dir), LORA["r"], mean_context)
    arms = args.arms.split(",")
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for round_index in range(args.repeats):
        order = arms[round_index % len(arms) :] + arms[: round_index % len(arms)]
        for arm in order:
            result = run_arm(arm, model_dir, args.steps, args.warmup_steps, args.arm_timeout_s)
            if result is None:
                continue
            results[arm].append(result)
            print(f"round {round_index + 1} {arm}: {result['tokens_per_s']:.0f} tok/s, "
                  f"{result['peak_rss'] / 2**30:.2f} GiB, load {load_average()}", flush=True)  # fmt: skip
    header = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads",
        "versions": ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft", "trl", "loraforge")),
        "model": f"{BASE} ({model_dir.name}), LoRA r{LORA['r']} a{LORA['alpha']} all-linear",
        "data": f"{args.warmup_steps}+{args.steps} steps x {ROWS_PER_STEP} rows; measured row tokens "
        + json.dumps({k: round(v) for k, v in length_stats(lengths).items()}),
        "GEMM peak": f"{peak / 1e9:.0f} GFLOP/s {peak_dtype} (2048^3, the faster of bf16 and fp32, measured at start)",
        "cpu flags": cpu_flags(),
        "FLOPs per real token": f"{flops_token / 1e9:.2f} GFLOP",
        "load average": f"{load_before} at start, {load_average()} at end",
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    text = render(summarise(results, flops_token, peak), header)
    print(text)
    if args.out:
        write_text_atomic(args.out, text + "\n")


if __name__ == "__main__":
    main()
