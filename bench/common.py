"""Shared pieces of the training-speed benchmark: data, tokenization, measurements, FLOPs.

Every arm trains SmolLM2-135M-Instruct with the same LoRA (r16, alpha 32, dropout 0.05,
all-linear), AdamW lr 2e-4 (weight decay 0) with cosine decay after 1 warmup step, the same
ROWS_PER_STEP chat rows per optimizer step in the same order (rows[step*8:(step+1)*8]), and the
same seed. Only the training machinery differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

SEED = 0
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = 2e-4
WARMUP_RATIO = 0.03
ROWS_PER_STEP = 8
N_ROWS = 1200
# Per-turn word caps: the lognormal tail is kept but bounded, so a padded 8-row batch stays under
# ~8x320 tokens (uncapped 8x500-token batches took 15 GB RSS in the fp32 PEFT arm and crawled).
MAX_USER_WORDS = 180
MAX_ANSWER_WORDS = 120

_WORDS = (
    "order shipment refund invoice customer account password network printer laptop battery screen "
    "delivery warehouse schedule meeting report analysis budget quarter revenue growth forecast model "
    "python function error exception database query index table column value config server client "
    "request response latency cache memory thread process kernel driver update version release build "
    "the a an of to in for on with as by at from is are was were be been it this that these those and "
    "or but if then because so while when where which who how what why please thanks could would should"
).split()


def bench_rows(n_rows: int = N_ROWS, seed: int = SEED) -> list[dict[str, Any]]:
    """Deterministic chat rows with a long-tailed length spread (lognormal words per turn).

    User turns: median ~50 words, capped at 180; assistant turns: median ~40 words, capped at 120.
    Most rows are short with a tail of long ones, like real support/chat corpora.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        user_words = min(MAX_USER_WORDS, max(4, int(rng.lognormvariate(math.log(50), 0.7))))
        answer_words = min(MAX_ANSWER_WORDS, max(3, int(rng.lognormvariate(math.log(40), 0.7))))
        user = " ".join(rng.choice(_WORDS) for _ in range(user_words))
        answer = " ".join(rng.choice(_WORDS) for _ in range(answer_words))
        rows.append(
            {
                "id": f"b-{i:05d}",
                "messages": [
                    {"role": "user", "content": user.capitalize() + "?"},
                    {"role": "assistant", "content": answer.capitalize() + "."},
                ],
            }
        )
    return rows


def tokenize(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """ids and labels (-100 on the prompt): loss on the assistant turn only, as TRL's
    prompt/completion mode does."""
    prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
    return ids, labels


def step_rows(step: int) -> slice:
    return slice(step * ROWS_PER_STEP, (step + 1) * ROWS_PER_STEP)


def warmup_steps(total_steps: int) -> int:
    """The same count transformers' warmup_ratio gives (ceil), used by every arm."""
    return math.ceil(WARMUP_RATIO * total_steps)


def length_stats(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {"mean": sum(ordered) / len(ordered), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": ordered[-1]}


def peak_rss_bytes() -> int:
    """VmHWM: the process's peak resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def gemm_peak_flops(size: int = 2048, seconds: float = 3.0) -> tuple[float, str]:
    """The machine's fastest measured GEMM throughput (FLOP/s) over bf16 and fp32, with the threads
    torch uses, and which dtype gave it. On CPUs without avx512_bf16/AMX bf16 GEMMs are emulated
    and fp32 is the real peak; MFU against a slow emulated peak would read over 100%."""
    import torch

    best = (0.0, "fp32")
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        for _ in range(2):
            a @ b
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        best = max(best, (2 * size**3 * n / (time.perf_counter() - start), name))
    return best


def flops_per_token(config: Any, r: int, mean_context: float) -> float:
    """Training FLOPs per real token: 2N forward + 2N backward-to-inputs for the frozen matmuls
    (no weight gradients: the base is frozen), full fwd+bwd (6 per weight) for the adapters, and
    attention (QK^T and AV, forward + 2x backward) over the mean causal context of a token.
    The lm_head counts for every token, as in the issue's definition (an arm that skips it for
    prompt tokens does less work per token, and that shows as a higher MFU)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    inter = config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer_shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    n_matmul = layers * sum(i * o for i, o in per_layer_shapes) + h * config.vocab_size
    adapter = layers * sum(r * (i + o) for i, o in per_layer_shapes)
    attention_fwd = layers * 2 * 2 * h * mean_context
    return 4 * n_matmul + 6 * adapter + 3 * attention_fwd


def result_line(payload: dict[str, Any]) -> None:
    """Arms print one JSON line prefixed so the orchestrator can find it among library logs."""
    print("BENCH_RESULT " + json.dumps(payload), flush=True)


def set_threads() -> int:
    """BENCH_THREADS (default: every core) intra-op threads for every arm alike."""
    import torch

    n = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def arm_parser() -> argparse.ArgumentParser:
    """The flags every arm takes; an arm adds its own after."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first")
    return parser


def peft_lora_config() -> Any:
    """The benchmark's LoRA as a PEFT LoraConfig (the arms that call PEFT directly)."""
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
