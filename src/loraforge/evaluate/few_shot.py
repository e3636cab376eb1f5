"""The prompting baseline: the base answers each golden prompt with k training examples before it.

Would a good prompt have done it? The `few_shot` role answers every golden case as the base, with
`eval.few_shot.k` training rows placed before the golden question as earlier user and assistant
turns (after the golden row's own system prompt, if it has one), and is scored by the same checks.

Which rows: `nearest` (the default) ranks the training rows by the TF-IDF cosine of their last user
turn with the golden question's, over lower-cased word tokens, ties in file order; `random` draws
k rows with the run's seed, the same for every golden case. Either way the choice is a pure
function of the files and the config, so a rerun asks the same prompts (and hits the base cache).
The examples are ordered farthest first, so the nearest one sits next to the question. When the
rendered prompt with its answer budget exceeds `eval.few_shot.max_prompt_tokens` or the base's
context, the farthest examples are dropped until it fits; a case that fits none keeps its plain
prompt, and `FewShotCases.examples` says how many each case got.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from loraforge.config import FewShotSpec
from loraforge.data.types import Message, Record
from loraforge.evaluate.scoring import Case
from loraforge.models.generate import render_prompt

FEW_SHOT_ROLE = "few_shot"
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class FewShotCases:
    cases: list[Case]  # aligned with the golden cases given
    examples: list[int]  # examples each case holds after fitting the budget

    def summary(self, spec: FewShotSpec) -> dict[str, object]:
        held = self.examples
        return {
            "k": spec.k,
            "select": spec.select,
            "max_prompt_tokens": spec.max_prompt_tokens,
            "cases": len(held),
            "mean_examples": round(sum(held) / len(held), 2) if held else 0.0,
            "cases_with_fewer_than_k": sum(1 for n in held if n < spec.k),
        }


def example_turns(record: Record) -> tuple[Message, Message] | None:
    """A training row as one (user, assistant) example: its last user turn and the answer after it."""
    messages = record.messages
    if record.kind != "chat" or len(messages) < 2 or messages[-1].get("role") != "assistant":
        return None
    if messages[-2].get("role") != "user":
        return None
    return messages[-2], messages[-1]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class _Index:
    """TF-IDF vectors of the training examples' user turns, for cosine ranking."""

    def __init__(self, questions: Sequence[str]) -> None:
        docs = [Counter(_words(q)) for q in questions]
        df: Counter[str] = Counter()
        for doc in docs:
            df.update(doc.keys())
        n = len(docs)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self.vectors = [self._unit(doc) for doc in docs]

    def _unit(self, counts: Counter[str]) -> dict[str, float]:
        weights = {w: c * self.idf.get(w, 0.0) for w, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        return {w: v / norm for w, v in weights.items()}

    def nearest(self, question: str, k: int) -> list[int]:
        query = self._unit(Counter(_words(question)))
        scores = [sum(v * vec.get(w, 0.0) for w, v in query.items()) for vec in self.vectors]
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def few_shot_cases(
    golden: Sequence[Case],
    train: Sequence[Record],
    spec: FewShotSpec,
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str | None,
    seed: int,
    context: int | None = None,
) -> FewShotCases:
    """Each golden case with its examples in the prompt; `context` is the base's window in tokens."""
    examples = [turns for turns in (example_turns(r) for r in train) if turns is not None]
    if not examples:
        return FewShotCases(list(golden), [0] * len(golden))
    k = min(spec.k, len(examples))
    index = _Index([user["content"] for user, _ in examples]) if spec.select == "nearest" else None
    drawn = random.Random(seed).sample(range(len(examples)), k)
    cases, held = [], []
    for case in golden:
        picked = index.nearest(case.question, k) if index is not None else drawn
        budget = spec.max_prompt_tokens if context is None else min(spec.max_prompt_tokens, context)
        fitted, n = _fit(case, [examples[i] for i in picked], budget, tokenizer, chat_template)
        cases.append(fitted)
        held.append(n)
    return FewShotCases(cases, held)


def _fit(
    case: Case,
    picked: Sequence[tuple[Message, Message]],
    budget: int,
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str | None,
) -> tuple[Case, int]:
    """The case with as many of `picked` (nearest first) as fit `budget` tokens with its answer budget."""
    system = [m for m in case.prompt[:1] if m.get("role") == "system"]
    rest = list(case.prompt[len(system) :])
    for n in range(len(picked), 0, -1):
        shots = [turn for pair in reversed(picked[:n]) for turn in pair]  # farthest first, nearest last
        prompt = (*system, *shots, *rest)
        text = render_prompt(tokenizer, prompt, chat_template)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) + case.max_new_tokens <= budget:
            return replace(case, prompt=prompt), n
    return case, 0
