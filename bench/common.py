"""Shared pieces of the training-speed benchmark: data, tokenization, measurements, FLOPs.

Every arm trains the same model (SmolLM2-135M-Instruct's weights, or a random-weight shape from
SHAPES) with the same LoRA (r16, alpha 32, dropout 0.05, all-linear), AdamW lr 2e-4 (weight decay 0)
with cosine decay after ceil(3%) warmup steps, the same --rows-per-step chat rows per optimizer step
in the same order (rows[step*n:(step+1)*n]), and the same seed. Only the training machinery differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED = 0
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = 2e-4
WARMUP_RATIO = 0.03
ROWS_PER_STEP = 8  # CPU default; a GPU run takes more (--rows-per-step) so a step is not launch-bound
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


def step_rows(step: int, rows_per_step: int = ROWS_PER_STEP) -> slice:
    return slice(step * rows_per_step, (step + 1) * rows_per_step)


# Shapes for random-weight runs: speed does not depend on the weights' values, and no weights need
# to travel to (or be downloaded on) a GPU machine. Every shape uses SmolLM2's tokenizer; ids stay
# below its 49,152 even where the shape's vocabulary (and so its output head) is Llama-3's 128,256.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 1e5},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True, "rope_theta": 5e5},
    "llama-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "rope_theta": 5e5},
}  # fmt: skip
RANDOM = "random:"


def model_config(model: str) -> Any:
    """The config of --model: a model directory, or random:SHAPE (a Llama of that shape)."""
    from transformers import AutoConfig, LlamaConfig

    if model.startswith(RANDOM):
        shape = SHAPES[model.removeprefix(RANDOM)]
        return LlamaConfig(**shape, max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    return AutoConfig.from_pretrained(model)


def build_model(model: str, dtype: Any, device: str) -> Any:
    """--model on `device` in `dtype`, sdpa attention. Random shapes are drawn in fp32 from SEED on the
    device itself (an 8B model is never built on the CPU), then cast, so every arm gets the same weights.
    The GPU's peak-memory counter restarts once the model is in place."""
    import torch
    from transformers import AutoModelForCausalLM

    if model.startswith(RANDOM):
        torch.manual_seed(SEED)
        with torch.device(device):
            built = AutoModelForCausalLM.from_config(model_config(model), dtype=torch.float32,
                                                     attn_implementation="sdpa")  # fmt: skip
        built = built.to(device=device, dtype=dtype)  # a no-op move when the device context held
    else:
        built = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa").to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return built


def load_bench_tokenizer(args: argparse.Namespace) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(args.tokenizer or args.model)


def warmup_steps(total_steps: int) -> int:
    """The same count transformers' warmup_ratio gives (ceil), used by every arm."""
    return math.ceil(WARMUP_RATIO * total_steps)


def length_stats(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {"mean": sum(ordered) / len(ordered), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": ordered[-1]}


def peak_memory_bytes(device: str) -> int:
    """The peak the issue asks for: max_memory_allocated on a GPU, VmHWM (peak RSS) on the CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """VmHWM: the process's peak resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def gemm_peak_flops(device: str = "cpu", seconds: float = 3.0) -> tuple[float, str]:
    """The machine's fastest measured GEMM throughput (FLOP/s) over bf16 and fp32, with the threads
    torch uses, and which dtype gave it. On CPUs without avx512_bf16/AMX bf16 GEMMs are emulated
    and fp32 is the real peak (bf16 is not measured there; MFU against a slow emulated peak would read
    over 100%). On a GPU: bf16 8192^3 products (fp32 is far slower there)."""
    import torch

    from loraforge.models.base import fast_bf16_available

    cuda = device.startswith("cuda")
    size = 8192 if cuda else 2048
    # an emulated bf16 2048^3 product takes minutes on CPUs without avx512_bf16/AMX, and is never the peak
    cpu_dtypes = ((torch.bfloat16, "bf16"),) if fast_bf16_available() else ()
    dtypes = ((torch.bfloat16, "bf16"),) if cuda else (*cpu_dtypes, (torch.float32, "fp32"))
    best = (0.0, "fp32")
    for dtype, name in dtypes:
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        for _ in range(3):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10 if cuda else 1):
                a @ b
                n += 1
            if cuda:
                torch.cuda.synchronize()
        best = max(best, (2 * size**3 * n / (time.perf_counter() - start), name))
    return best


def shape_peak_flops(config: Any, tokens: int, dtype_name: str, device: str = "cpu", seconds: float = 0.3) -> float:
    """The GEMM rate (FLOP/s) at the model's own shapes: x (tokens x in) @ W.T for each frozen matmul of a
    decoder layer and the output head, each timed for about `seconds` and weighted by how often a forward
    runs it (layers x per-layer shapes, one head), so FLOPs summed over time summed. `tokens` is one
    micro-batch's token count; the dtype is the 2048^3 peak's, so the two MFUs compare like for like."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    h, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = {(h, h): 2, (h, kv): 2, (h, inter): 2, (inter, h): 1}  # q+o, k+v, gate+up, down
    work = [(i, o, n * config.num_hidden_layers) for (i, o), n in shapes.items()] + [(h, config.vocab_size, 1)]
    flops = elapsed = 0.0
    for inputs, outputs, count in work:
        x = torch.randn(tokens, inputs, dtype=dtype, device=device)
        w = torch.randn(outputs, inputs, dtype=dtype, device=device)
        for _ in range(2):
            torch.nn.functional.linear(x, w)
        sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.nn.functional.linear(x, w)
            n += 1
            if device.startswith("cuda") and n % 10:
                continue
            sync(device)
        sync(device)
        per_call = (time.perf_counter() - start) / n
        flops += count * 2.0 * tokens * inputs * outputs
        elapsed += count * per_call
    return flops / elapsed


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


def sync(device: str) -> None:
    """Wait for queued GPU work, so a wall-clock timer measures work done (no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


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
    parser.add_argument("--model", required=True, help="a model directory, or random:SHAPE (see SHAPES)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows-per-step", type=int, default=ROWS_PER_STEP)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first")
    return parser


# A warmup step longer than this is timed too: its one-time costs (lazy initialisation, first
# allocations: well under a second here) are under 2% of it. TRL's bf16 autocast on a CPU that
# emulates bf16 takes minutes a step, and an untimed one would cost a whole extra step of the budget.
WARMUP_TIMED_AFTER_S = 60.0


@dataclass
class StepClock:
    """Which optimizer steps an arm times, and when it stops early.

    Steps before --warmup-steps are untimed, except a step slower than WARMUP_TIMED_AFTER_S, which is
    timed and ends the warmup. After a timed step the arm stops once its timed seconds reach
    --max-seconds (0: never), so a slow arm measures fewer steps instead of overrunning the budget.
    """

    warmup_steps: int
    max_seconds: float = 0.0
    seconds: float = 0.0
    timed: list[int] = field(default_factory=list)

    def record(self, step: int, seconds: float) -> bool:
        """Account one finished step; True when the arm should stop after it."""
        if self.timed or step >= self.warmup_steps or seconds > WARMUP_TIMED_AFTER_S:
            self.timed.append(step)
            self.seconds += seconds
        return bool(self.timed) and 0 < self.max_seconds <= self.seconds

    def real_tokens(self, tokenizer: Any, rows: list[dict[str, Any]], rows_per_step: int) -> int:
        """Non-pad tokens of the timed steps' rows."""
        return sum(len(tokenize(tokenizer, r)[0]) for s in self.timed for r in rows[step_rows(s, rows_per_step)])


def add_max_seconds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop after the timed step that takes timed seconds to this (0: every step)")  # fmt: skip


def peft_lora_config() -> Any:
    """The benchmark's LoRA as a PEFT LoraConfig (the arms that call PEFT directly)."""
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
