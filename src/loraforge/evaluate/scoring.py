"""Golden cases, what each model answers, the reference loss, and the per-slice scores.

A case is a golden Record split into its prompt (every turn before the last) and its reference
answer (the last assistant turn). Models are named by role: `base`, `adapter`, `against`. Prompts
and references are rendered in `chat_template`, the template the adapter was trained with
(None: the tokenizer's own).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from loraforge.data.types import IGNORE_INDEX, Message, Record
from loraforge.errors import EvalError
from loraforge.evaluate.checks import DEFAULT_CHECKS, CheckSpec, check_problems, hopeless_test, run_checks
from loraforge.models.forward import logits_at_labels, summed_nll_per_row
from loraforge.models.generate import generate_chat, render_prompt, score_then_generate

DEFAULT_SLICE = "golden"  # a golden row without "slice"


@dataclass(frozen=True)
class Case:
    id: str
    slice: str
    where: str
    prompt: tuple[Message, ...]
    reference: str
    checks: tuple[CheckSpec, ...]
    max_new_tokens: int
    probe: bool = False

    @property
    def question(self) -> str:
        """The last user turn, for reports."""
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else ""


@dataclass
class RowResult:
    """One case scored for every model role."""

    case: Case
    prompt: str = ""  # the generation prompt as rendered for every role, chat template included
    outputs: dict[str, str] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)  # role -> why each failing check failed
    nll_sum: dict[str, float] = field(default_factory=dict)  # summed token NLL of the reference answer
    n_ref_tokens: int = 0
    judged: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # role -> each judge check's outcome
    prompts: dict[str, str] = field(default_factory=dict)  # role -> its own prompt, where not `prompt` (few-shot)

    def to_dict(self) -> dict[str, Any]:
        loss = {role: self.nll_sum[role] / self.n_ref_tokens for role in self.nll_sum if self.n_ref_tokens}
        return {
            "id": self.case.id,
            "slice": self.case.slice,
            "where": self.case.where,
            "question": self.case.question,
            "prompt": self.prompt,
            "reference": self.case.reference,
            "checks": list(self.case.checks or DEFAULT_CHECKS),
            "outputs": self.outputs,
            "passed": self.passed,
            "failures": self.failures,
            "reference_loss": loss,
            **({"judge": self.judged} if self.judged else {}),
            **({"prompts": self.prompts} if self.prompts else {}),
        }


@dataclass(frozen=True)
class SliceScore:
    name: str
    n: int
    passes: dict[str, int]  # role -> rows passed
    loss: dict[str, float]  # role -> mean token NLL of the reference answers
    probe: bool = False
    judge: dict[str, Any] | None = None  # judge slices: kinds, errors, agreement, whether it decides (judging)

    def rate(self, role: str) -> float:
        return self.passes[role] / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "probe": self.probe}
        for role in self.passes:
            out[role] = self.rate(role)
            out[f"{role}_passed"] = self.passes[role]
            out[f"{role}_loss"] = self.loss.get(role)
        if self.judge is not None:
            out["judge"] = self.judge
        return out


def cases_from_records(
    records: Sequence[Record], max_new_tokens: int, probe: bool = False, default_slice: str = DEFAULT_SLICE
) -> list[Case]:
    """Validate golden records into cases; every problem is collected and raised once."""
    problems: list[str] = []
    cases: list[Case] = []
    for record in records:
        where = record.where
        messages = record.messages
        if record.kind != "chat" or len(messages) < 2 or messages[-1].get("role") != "assistant":
            problems.append(f"{where}: a golden row needs a conversation ending in the reference assistant turn")
            continue
        reference = messages[-1]["content"]
        row_problems = check_problems(record.checks, reference, where)
        problems.extend(row_problems)
        if row_problems:
            continue
        cases.append(
            Case(
                id=record.id or f"{record.source.stem}:{record.line}",
                slice=record.slice or default_slice,
                where=where,
                prompt=tuple(messages[:-1]),
                reference=reference,
                checks=tuple(record.checks),
                max_new_tokens=max_new_tokens,
                probe=probe,
            )
        )
    if problems:
        shown = "\n  - ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise EvalError(f"golden set: {len(problems)} problem(s):\n  - {shown}{more}")
    return cases


def answer_and_score(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    cases: Sequence[Case],
    batch_size: int,
    desc: str,
    give_up_after: int | None = None,
    chat_template: str | None = None,
) -> tuple[list[str], list[tuple[float, int]]]:
    """Greedy answers and the reference answer's (summed NLL, token count), in case order.

    Where the conversation with its reference starts with exactly the generation prompt's tokens
    (every template seen so far), one forward scores the reference and leaves the prompt's KV cache
    for generation (models.generate.score_then_generate); otherwise the prompt is encoded twice.
    With `give_up_after`, an answer that can no longer pass its checks (checks.hopeless_test) ends
    after that many new tokens: its pass or fail is already known, so the scores do not change.
    """
    answers: dict[int, str] = {}
    scores: dict[int, tuple[float, int]] = {}
    all_prompts = [prompt_ids(tokenizer, case, chat_template) for case in cases]  # once: batching and scoring
    batches = _batches(cases, batch_size, [len(p) for p in all_prompts])
    for budget, chunk in tqdm(batches, desc=desc, unit="batch", disable=None):
        encoded = [encode_reference(tokenizer, cases[i], chat_template) for i in chunk]
        prompts = [all_prompts[i] for i in chunk]
        hopeless = [hopeless_test(cases[i].checks, cases[i].reference) for i in chunk]
        if all(ids[: len(p)] == p and len(ids) > len(p) for (ids, _), p in zip(encoded, prompts, strict=True)):
            outs, nll = score_then_generate(
                model,
                tokenizer,
                prompts,
                [ids[len(p) :] for (ids, _), p in zip(encoded, prompts, strict=True)],
                [labels[len(p) :] for (_, labels), p in zip(encoded, prompts, strict=True)],
                budget,
                ignore_index=IGNORE_INDEX,
                hopeless=hopeless,
                give_up_after=give_up_after,
            )
        else:
            conversations = [list(cases[i].prompt) for i in chunk]
            outs = generate_chat(
                model, tokenizer, conversations, max_new_tokens=budget, batch_size=len(chunk),
                hopeless=hopeless, give_up_after=give_up_after, chat_template=chat_template,
            )  # fmt: skip
            nll = _reference_nll(model, tokenizer, encoded)
        answers.update(zip(chunk, outs, strict=True))
        scores.update(zip(chunk, nll, strict=True))
    return [answers[i] for i in range(len(cases))], [scores[i] for i in range(len(cases))]


def _batches(cases: Sequence[Case], batch_size: int, lengths: Sequence[int]) -> list[tuple[int, list[int]]]:
    """(max_new_tokens, case indices) batches: cases sharing a generation budget go together, in
    order of prompt length, so a batch pads its prompts to a near length rather than the longest of
    a random draw (docs/PERFORMANCE.md, "The eval gate": with the shared prefix, -19% on the demo).
    A budget's cases are split into as few batches of at most `batch_size` as hold them, of even
    sizes: a decode step of 9 rows costs ~45% of one of 32 on CPU, so 169 rows go as 6 x ~28, not
    5 x 32 + 9. `lengths` holds each case's prompt length in tokens."""
    by_budget: dict[int, list[int]] = {}
    for index in sorted(range(len(cases)), key=lambda i: (lengths[i], i)):
        by_budget.setdefault(cases[index].max_new_tokens, []).append(index)
    batches = []
    for budget, idx in by_budget.items():
        count = math.ceil(len(idx) / batch_size)
        bounds = [round(k * len(idx) / count) for k in range(count + 1)]
        batches += [(budget, idx[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    return batches


def prompt_text(tokenizer: PreTrainedTokenizerBase, case: Case, chat_template: str | None = None) -> str:
    """The generation prompt as every role sees it (report.json keeps it per row)."""
    return render_prompt(tokenizer, case.prompt, chat_template)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, case: Case, chat_template: str | None = None) -> list[int]:
    """The generation prompt's token ids, as generate_chat encodes them."""
    text = render_prompt(tokenizer, case.prompt, chat_template)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_reference(
    tokenizer: PreTrainedTokenizerBase, case: Case, chat_template: str | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and labels that keep only the reference answer tokens
    (plus the end-of-turn token right after it), rendered in `chat_template`."""
    messages = [*case.prompt, {"role": "assistant", "content": case.reference}]
    text = str(tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template))
    prompt = render_prompt(tokenizer, case.prompt, chat_template)
    answer = case.reference.strip()
    # the answer starts where the generation prompt ends; templates that rewrite earlier turns fall back to search
    start = text.find(answer, len(prompt)) if text.startswith(prompt) else text.rfind(answer)
    if start < 0:
        raise EvalError(f"{case.where}: the chat template drops the reference answer; cannot score its loss")
    end = start + len(answer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    special = set(tokenizer.all_special_ids)
    labels = [IGNORE_INDEX] * len(ids)
    for i, (tok_start, tok_end) in enumerate(enc["offset_mapping"]):
        if tok_end > start and tok_start < end:
            labels[i] = ids[i]
        elif tok_start >= end:
            # the end-of-turn marker is part of answering: a model that never stops pays for it
            if ids[i] in special:
                labels[i] = ids[i]
            break
    return ids, labels


def _reference_nll(
    model: Any, tokenizer: PreTrainedTokenizerBase, encoded: Sequence[tuple[list[int], list[int]]]
) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each encoded conversation's labelled (reference) tokens."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in encoded], device=device)
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in encoded], device=device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded], device=device)
    with torch.no_grad():
        logits, targets, keep = logits_at_labels(
            model, input_ids, labels, attention_mask=mask, ignore_index=IGNORE_INDEX
        )
    return summed_nll_per_row(logits, targets, keep)


def score_role(role: str, rows: Sequence[RowResult], answers: Sequence[str], nll: Sequence[tuple[float, int]]) -> None:
    """Record one model's answers, check outcomes and reference loss on each row."""
    for row, answer, (nll_sum, count) in zip(rows, answers, nll, strict=True):
        outcomes = run_checks(row.case.checks, answer, row.case.reference)
        row.outputs[role] = answer
        row.passed[role] = all(o.passed for o in outcomes)
        row.failures[role] = [f"{o.type}: {o.detail}" for o in outcomes if not o.passed]
        row.nll_sum[role] = nll_sum
        row.n_ref_tokens = count


def slice_scores(rows: Sequence[RowResult], roles: Sequence[str]) -> dict[str, SliceScore]:
    """Per slice, in first-seen order: rows, rows passed and token-weighted reference loss per role,
    for the roles that answered every row of the slice (few-shot answers golden rows only)."""
    grouped: dict[str, list[RowResult]] = {}
    for row in rows:
        grouped.setdefault(row.case.slice, []).append(row)
    scores = {}
    for name, members in grouped.items():
        tokens = sum(r.n_ref_tokens for r in members)
        present = [role for role in roles if all(role in r.passed for r in members)]
        passes = {role: sum(1 for r in members if r.passed.get(role)) for role in present}
        loss = {role: sum(r.nll_sum[role] for r in members) / tokens for role in present if tokens}
        scores[name] = SliceScore(name, len(members), passes, loss, probe=members[0].case.probe)
    return scores
