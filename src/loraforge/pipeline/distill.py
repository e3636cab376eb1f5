"""Replay rows written by the base itself (self-distillation), to keep its general skills.

A LoRA trained only on one task forgets: after half an epoch on the bundled support-ticket task the
135M base answered "What is 2 + 2?" with JSON-shaped text and the gate blocked it. Mixing in rows
that the base answers itself (`data.replay`) keeps its behaviour on everything else, at no labelling
cost: the targets are what the base already says, so they only pull the adapter back to it.

    loraforge distill PROMPTS.jsonl --out replay.jsonl

A prompt row is `{"messages": [...]}` ending on a user turn (a trailing assistant turn is replaced)
or `{"prompt": "..."}`, with an optional `id` and optional `checks` (the gate's check types): an
answer is kept only when it passes its checks, so a harmful prompt with `[{"type": "refusal"}]`
keeps the base's refusal and drops a compliance. Answers cut off at `max_new_tokens` are dropped,
since training on them would teach the adapter to stop mid-sentence.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraforge.data.records import ROLES, read_lines
from loraforge.errors import DataError
from loraforge.evaluate.checks import CHECK_TYPES, check_problems, run_checks
from loraforge.files import write_text_atomic
from loraforge.recipe import DISTILL_BATCH, DISTILL_MAX_NEW_TOKENS

if TYPE_CHECKING:  # torch stays out of `loraforge --help` (tests/test_cli.py)
    from loraforge.models import LoadedBase

NEEDS_REFERENCE = ("exact", "json_fields")  # checks that compare with a reference answer


@dataclass(frozen=True)
class Prompt:
    line: int
    id: str
    messages: tuple[dict[str, str], ...]
    checks: tuple[dict[str, Any], ...] = ()


@dataclass
class DistillResult:
    rows: list[dict[str, Any]]
    dropped: Counter[str] = field(default_factory=Counter)
    examples_dropped: list[str] = field(default_factory=list)


def read_prompts(path: Path) -> list[Prompt]:
    """Every prompt row of `path`; one DataError lists all bad lines (file, line, fix)."""
    if not path.is_file():
        raise DataError(f'{path}: no such prompts file; give a jsonl of {{"messages": [...]}} or {{"prompt": ...}}')
    prompts: list[Prompt] = []
    problems: list[str] = []
    for line_no, raw, not_utf8 in read_lines(path, hashlib.sha256()):
        if not_utf8 is not None:
            problems.append(f"{path} line {line_no}: {not_utf8}")
            continue
        if not raw.strip():
            continue
        try:
            prompts.append(_parse_prompt(raw, line_no))
        except ValueError as exc:
            problems.append(f"{path} line {line_no}: {exc}")
    if problems:
        raise DataError("\n".join(problems))
    if not prompts:
        raise DataError(f"{path}: no prompt rows; add one JSON object per line")
    return prompts


def _parse_prompt(raw: str, line: int) -> Prompt:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno}); one object per line") from exc
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object; each line must be {...}")
    if "prompt" in obj and isinstance(obj["prompt"], str) and obj["prompt"].strip():
        messages: list[dict[str, str]] = [{"role": "user", "content": obj["prompt"]}]
    elif isinstance(obj.get("messages"), list) and obj["messages"]:
        messages = [dict(m) for m in obj["messages"] if isinstance(m, dict)]
        if len(messages) != len(obj["messages"]) or any(
            m.get("role") not in ROLES or not isinstance(m.get("content"), str) for m in messages
        ):
            raise ValueError(f"every message needs a role ({', '.join(ROLES)}) and string content")
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the base writes this turn
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("the conversation must end on a user turn for the base to answer")
    else:
        raise ValueError('no prompt: give "messages" (ending on a user turn) or a non-empty "prompt"')
    checks = _prompt_checks(obj.get("checks") or [])
    return Prompt(line=line, id=str(obj.get("id", f"line-{line}")), messages=tuple(messages), checks=checks)


def _prompt_checks(checks: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise ValueError('"checks" must be a list of {"type": ...} objects')
    with_reference = [c.get("type") for c in checks if c.get("type") in NEEDS_REFERENCE]
    if with_reference:
        raise ValueError(
            f"check {with_reference[0]!r} compares with a reference answer and a prompt row has none; "
            f"use one of {', '.join(t for t in CHECK_TYPES if t not in NEEDS_REFERENCE)}"
        )
    problems = check_problems(checks, "", "row")
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(checks)


def distill(
    base: LoadedBase,
    prompts: list[Prompt],
    *,
    max_new_tokens: int = DISTILL_MAX_NEW_TOKENS,
    batch_size: int = DISTILL_BATCH,
    progress: bool = False,
    chat_template: str | None = None,
) -> DistillResult:
    """The base's greedy answer to each prompt, as training rows; unfinished or failing answers dropped.

    `chat_template` is the template the run trains with (data.template); None: the tokenizer's own."""
    from loraforge.models.generate import generate_chat_finished

    answers = generate_chat_finished(
        base.model, base.tokenizer, [p.messages for p in prompts], max_new_tokens, batch_size, progress, chat_template
    )
    result = DistillResult(rows=[])
    for prompt, (answer, finished) in zip(prompts, answers, strict=True):
        reason = _drop_reason(prompt, answer, finished)
        if reason:
            result.dropped[reason] += 1
            result.examples_dropped.append(f"line {prompt.line} ({reason}): {answer[:80]!r}")
            continue
        messages = [*prompt.messages, {"role": "assistant", "content": answer}]
        result.rows.append({"id": prompt.id, "messages": messages})
    return result


def _drop_reason(prompt: Prompt, answer: str, finished: bool) -> str | None:
    if not finished:
        return "unfinished"
    if not answer:
        return "empty"
    if prompt.checks and not all(o.passed for o in run_checks(prompt.checks, answer, "")):
        return "failed_checks"
    return None


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
