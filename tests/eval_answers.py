"""Greedy answers generated on their own, without the gate's reference scoring: the bar the
gate's one-pass path (evaluate.scoring.answer_and_score) is checked against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from loraforge.evaluate.scoring import Case, _batches, prompt_ids
from loraforge.models.generate import generate_chat


def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    cases: Sequence[Case],
    batch_size: int,
    chat_template: str | None = None,
) -> list[str]:
    """Greedy answers in case order, each to its end or max_new_tokens, batched as the gate batches
    them (cases sharing max_new_tokens together, in prompt-length order)."""
    answers: dict[int, str] = {}
    lengths = [len(prompt_ids(tokenizer, case, chat_template)) for case in cases]
    for budget, chunk in _batches(cases, batch_size, lengths):
        conversations = [list(cases[i].prompt) for i in chunk]
        outs = generate_chat(
            model, tokenizer, conversations, max_new_tokens=budget, batch_size=len(chunk), chat_template=chat_template
        )
        answers.update(zip(chunk, outs, strict=True))
    return [answers[i] for i in range(len(cases))]
