"""Tiny training rows and a batch plan over them, shared by the train tests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from loraforge.data.types import IGNORE_INDEX, TokenizedExample
from loraforge.train import BatchPlan

_WORDS = "order refund damaged missing late item please help customer support email phone json key value".split()


def tiny_examples(base_dir: Path, n: int, seed: int = 0) -> list[TokenizedExample]:
    """Chat rows rendered with the tiny base's template; loss only on the assistant answer.
    Answers follow a learnable rule (they repeat the question's last words) and vary in length."""
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    rng = random.Random(seed)
    examples = []
    for line in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 10))]
        prompt = [{"role": "user", "content": " ".join(words)}]
        answer = " ".join(words[-rng.randint(1, len(words)) :])
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = prompt_text + answer + "<|im_end|>\n"
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
        examples.append(TokenizedExample(tuple(ids), tuple(labels), line + 1))
    return examples


def collate_right_padded(rows: Sequence[TokenizedExample]) -> dict[str, Any]:
    """A stand-in for the data stage's collate: right-padded rows, positions 0..n-1, no attention
    mask (padding sits after every real token, so causal attention never reaches it)."""
    width = max(len(r.input_ids) for r in rows)
    ids = [list(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows]
    labels = [list(r.labels) + [IGNORE_INDEX] * (width - len(r.labels)) for r in rows]
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.arange(width).repeat(len(rows), 1),
    }


def tiny_plan(base_dir: Path, n_train: int = 24, n_eval: int = 6, micro: int = 2, **kwargs: Any) -> BatchPlan:
    rows = tiny_examples(base_dir, n_train + n_eval)
    return BatchPlan(rows[:n_train], rows[n_train:], collate_right_padded, micro_batch_size=micro, seed=0, **kwargs)
