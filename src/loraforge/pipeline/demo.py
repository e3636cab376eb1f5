"""The demo: what `make demo` runs on the embedded default base.

Each step is a plain function call so later stages slot in as they land.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loraforge.config import DEFAULT_BASE
from loraforge.models import LoadedBase, load_base
from loraforge.models.card import BaseCard, base_card
from loraforge.models.generate import generate_chat

DEMO_QUESTIONS = [
    "What is the capital of France?",
    "Extract the order id from: 'Hi, my order ORD-48213 arrived broken.' Reply with JSON only.",
]


@dataclass
class DemoResult:
    card: BaseCard
    answers: list[tuple[str, str]] = field(default_factory=list)
    load_seconds: float = 0.0


def run_demo(base_spec: str = DEFAULT_BASE, max_new_tokens: int = 48) -> DemoResult:
    base = step_resolve_base(base_spec)
    result = DemoResult(card=base_card(base), load_seconds=base.load_seconds)
    result.answers = step_generate(base, DEMO_QUESTIONS, max_new_tokens)
    return result


def step_resolve_base(base_spec: str) -> LoadedBase:
    return load_base(base_spec)


def step_generate(base: LoadedBase, questions: list[str], max_new_tokens: int) -> list[tuple[str, str]]:
    conversations = [[{"role": "user", "content": q}] for q in questions]
    answers = generate_chat(base.model, base.tokenizer, conversations, max_new_tokens=max_new_tokens)
    return list(zip(questions, answers, strict=True))
