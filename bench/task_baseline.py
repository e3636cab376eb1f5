"""A plain-PEFT baseline on one bundled task (examples/tasks/NAME): LoRA as most tutorials write
it, then the golden pass rate as loraforge's gate would score it.

    python bench/task_baseline.py examples/tasks/style_rewrite --seed 0 [--precision fp32] [--base-only]

Training is plain transformers + peft: LoRA r16, alpha 32, dropout 0.05 on every linear layer,
AdamW lr 2e-4 (no weight decay), cosine decay after ceil(3%) warmup steps, gradient norm clipped
to 1.0, 8 rows a step padded to the longest (no packing), 2 epochs in a seeded shuffled order,
loss on the assistant turn only under the tokenizer's chat template. Then each golden row's
answer is generated greedily (at most 48 new tokens) and scored by its checks.

loraforge is used only to resolve and load the base (`load_base`: the converted SmolLM2 under
LORAFORGE_HOME) and to score answers (`run_checks`, the gate's own checks), so the pass rate is the
one the gate would report. --base-only skips training and scores the untrained base.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import LR, peft_lora_config, result_line, set_threads, tokenize, warmup_steps
from peft import get_peft_model
from transformers import StoppingCriteria, StoppingCriteriaList, get_cosine_schedule_with_warmup

from loraforge.evaluate.checks import hopeless_test, run_checks
from loraforge.models import load_base

BASE = "smollm2-135m-instruct"
ROWS_PER_STEP = 8
EPOCHS = 2
MAX_GRAD_NORM = 1.0
MAX_NEW_TOKENS = 48
GENERATE_BATCH = 16
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def pad_batch(batch: list[tuple[list[int], list[int]]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-padded ids, mask and labels (-100 on the pads) for one step."""
    width = max(len(ids) for ids, _ in batch)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch], device=device),
        "attention_mask": torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device
        ),  # fmt: skip
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in batch], device=device),
    }


def train_adapter(model: Any, tokenizer: Any, rows: list[dict[str, Any]], seed: int, device: str) -> dict[str, Any]:
    """The plain loop; returns steps, seconds and the mean loss of the first and last ten steps."""
    encoded = [tokenize(tokenizer, row) for row in rows]
    order_rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(encoded) / ROWS_PER_STEP)
    total_steps = EPOCHS * steps_per_epoch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps(total_steps), total_steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for _ in range(EPOCHS):
        order = list(range(len(encoded)))
        order_rng.shuffle(order)
        for step in range(steps_per_epoch):
            batch = [encoded[i] for i in order[step * ROWS_PER_STEP : (step + 1) * ROWS_PER_STEP]]
            loss = model(**pad_batch(batch, pad_id, device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if len(losses) % 10 == 0:
                print(f"step {len(losses)}/{total_steps} loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    return {"steps": total_steps, "seconds": seconds, "loss_first10": sum(losses[:10]) / len(losses[:10]),
            "loss_last10": sum(losses[-10:]) / len(losses[-10:])}  # fmt: skip


class GiveUp(StoppingCriteria):
    """Ends a row once its answer can no longer pass its checks, whatever follows (loraforge's
    hopeless_test, as the gate's eval.give_up_after does): its score is fixed, and a base rambling
    to 48 tokens on every row was most of a --base-only run."""

    def __init__(self, tokenizer: Any, rows: list[dict[str, Any]], prompt_width: int) -> None:
        self.tokenizer, self.prompt_width = tokenizer, prompt_width
        self.tests = [hopeless_test(r.get("checks") or [], r["messages"][-1]["content"]) for r in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [test is not None and test(text) for test, text in zip(self.tests, texts, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def greedy_answers(model: Any, tokenizer: Any, rows: list[dict[str, Any]], device: str) -> list[str]:
    """Each row's answer to every turn before its last, greedy, left-padded batches."""
    tokenizer.padding_side = "left"  # decoder-only: every prompt must end where generation starts
    answers: list[str] = []
    for start in range(0, len(rows), GENERATE_BATCH):
        chunk = rows[start : start + GENERATE_BATCH]
        prompts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                   for r in chunk]  # fmt: skip
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        give_up = StoppingCriteriaList([GiveUp(tokenizer, chunk, enc["input_ids"].shape[1])])
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, stopping_criteria=give_up)  # fmt: skip
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        print(f"generated {len(answers)}/{len(rows)}", file=sys.stderr, flush=True)
    return answers


def pass_rates(golden: list[dict[str, Any]], answers: list[str]) -> dict[str, float]:
    """Share of rows whose every check passes, overall ("golden") and per slice."""
    by_slice: dict[str, list[bool]] = {"golden": []}
    for row, answer in zip(golden, answers, strict=True):
        outcomes = run_checks(row.get("checks") or [], answer, row["messages"][-1]["content"])
        passed = all(o.passed for o in outcomes)
        by_slice["golden"].append(passed)
        by_slice.setdefault(row.get("slice", "golden"), []).append(passed)
    return {name: sum(flags) / len(flags) for name, flags in by_slice.items()}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", type=Path, help="a task folder holding train.jsonl and golden.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="seeds the adapter's init, dropout and row order")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--base-only", action="store_true", help="score the untrained base; no training")
    parser.add_argument("--base", default=BASE, help="a loraforge base spec: an alias or a model directory")
    args = parser.parse_args()
    threads = set_threads()
    base = load_base(args.base, dtype=PRECISIONS[args.precision], device=args.device)
    model, tokenizer = base.model, base.tokenizer
    golden = read_jsonl(args.task / "golden.jsonl")
    trained: dict[str, Any] = {"steps": 0, "seconds": 0.0}
    if not args.base_only:
        torch.manual_seed(args.seed)
        model = get_peft_model(model, peft_lora_config())
        trained = train_adapter(model, tokenizer, read_jsonl(args.task / "train.jsonl"), args.seed, args.device)
    started = time.perf_counter()
    answers = greedy_answers(model, tokenizer, golden, args.device)
    rates = pass_rates(golden, answers)
    result = {"task": args.task.name, "model": "base" if args.base_only else "adapter", **trained,
              "eval_seconds": time.perf_counter() - started, "golden_pass_rate": rates.pop("golden"),
              "slices": rates, "seed": args.seed, "precision": args.precision, "device": args.device,
              "threads": threads, "cpu": cpu_model(), "examples": answers[:3]}  # fmt: skip
    print(f"task {result['task']} ({result['model']}): {result['steps']} steps in {result['seconds']:.1f} s, "
          f"golden pass rate {result['golden_pass_rate']:.1%} "
          f"({', '.join(f'{k} {v:.1%}' for k, v in rates.items())}); cpu {result['cpu']}")  # fmt: skip
    result_line(result)


if __name__ == "__main__":
    main()
