"""Read a preference-pair jsonl file (`{"prompt", "chosen", "rejected"}` rows) into `PairRecord`s.

The row format is what `loraforge feedback export --format dpo` writes: `prompt` is the chat
message list a client sent (no assistant turn at the end) or a plain prompt string, `chosen` and
`rejected` are assistant answers as strings. An answer may also be an assistant message object or
a one-element list of it (TRL's conversational preference format). Every problem names the file,
the line and the fix, in the wording `read_records` uses for SFT rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loraforge.data.records import ROLES, RowProblem, load_object, read_rows, row_id
from loraforge.data.types import Message, PairRecord
from loraforge.errors import DataError

PAIR_KEYS = ("prompt", "chosen", "rejected")
ANSWER_SHAPES = 'a string, {"role": "assistant", "content": ...} or a one-element list of it'


@dataclass
class PairReadResult:
    records: list[PairRecord]
    problems: list[str] = field(default_factory=list)  # "FILE line N: what; fix", every one found
    sha256: str = ""  # of the exact file bytes
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped (on_error=skip)
    rows_in: int = 0  # non-blank lines


def read_pairs(path: Path, *, max_row_chars: int, on_error: Literal["strict", "skip"] = "strict") -> PairReadResult:
    """Stream `path` once (hashing its bytes) and validate every preference row.

    strict: raise one DataError listing the problems (the first 20, then a count).
    skip: drop bad rows, count them by reason in `skipped` and keep the messages in `problems`.
    An empty file, or one with no valid row, is an error in both modes.
    """
    if on_error not in ("strict", "skip"):
        raise DataError(f"read_pairs(on_error={on_error!r}): use 'strict' or 'skip'")
    result = PairReadResult(records=[])
    rows = read_rows(
        path,
        lambda raw, line_no: parse_pair(raw, path, line_no, max_row_chars=max_row_chars),
        on_error=on_error,
        empty=f'{path}: the file is empty; add one {{"prompt", "chosen", "rejected"}} object per line '
        "(see docs/data.md#preference-pairs)",
        none_valid="no valid pairs among {rows_in} rows; fix the rows listed by on_error=strict",
    )
    result.records, result.problems, result.sha256, result.skipped, result.rows_in = rows
    return result


def parse_pair(raw: str, source: Path, line: int, *, max_row_chars: int) -> PairRecord:
    """Validate one jsonl line as a preference pair; raise RowProblem naming the fix."""
    obj = load_object(raw, max_row_chars=max_row_chars)
    missing = [key for key in PAIR_KEYS if key not in obj]
    if missing:
        names = " and ".join(repr(key) for key in missing)
        raise RowProblem(
            "missing_field",
            f"{names} {'is' if len(missing) == 1 else 'are'} missing; "
            'a preference row is {"prompt": ..., "chosen": ..., "rejected": ...}',
        )
    prompt = _prompt(obj["prompt"])
    chosen = _answer(obj["chosen"], "chosen")
    rejected = _answer(obj["rejected"], "rejected")
    if chosen.strip() == rejected.strip():
        raise RowProblem(
            "identical_answers",
            "'chosen' and 'rejected' are the same text; a pair must prefer one answer over a different one, "
            "drop the row or give a different rejected answer",
        )
    return PairRecord(source=source, line=line, prompt=prompt, chosen=chosen, rejected=rejected, id=row_id(obj))


def _prompt(value: Any) -> tuple[Message, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem("empty_content", "'prompt' is empty; give the user's text or drop the row")
        return ({"role": "user", "content": value},)
    if not isinstance(value, list):
        raise RowProblem(
            "bad_prompt",
            f'\'prompt\' is a {type(value).__name__}; use a string or a list of {{"role", "content"}} messages',
        )
    messages = [_message(item, f"prompt[{index}]") for index, item in enumerate(value)]
    return _check_prompt_turns(messages)


def _message(item: Any, name: str) -> Message:
    """One {"role", "content"} object; other keys (a client's "name") are left out."""
    if not isinstance(item, dict):
        raise RowProblem("bad_messages", f'{name} is not an object; use {{"role": ..., "content": ...}}')
    role = item.get("role")
    if role not in ROLES:
        raise RowProblem("bad_role", f"{name} has role {role!r}; use one of {', '.join(ROLES)}")
    if "content" not in item:
        raise RowProblem("missing_field", f"{name} ({role}) has no 'content'; add it as a string")
    content = item["content"]
    if not isinstance(content, str):
        raise RowProblem(
            "non_string_content",
            f"{name} ({role}) content is a {type(content).__name__}, not a string; flatten it to text",
        )
    if not content.strip():
        raise RowProblem("empty_content", f"{name} ({role}) content is empty; give it text or drop it")
    return {"role": role, "content": content}


def _check_prompt_turns(messages: list[Message]) -> tuple[Message, ...]:
    """System first (optional), then a conversation that starts and ends on a user turn: the two
    answers are the assistant's reply to that last user turn."""
    if not messages:
        raise RowProblem("bad_messages", "'prompt' is an empty list; give at least one user turn")
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise RowProblem(
            "bad_turn_order", f"a system turn at prompt[{roles.index('system', 1)}]; only the first may be system"
        )
    chat = roles[1:] if roles[0] == "system" else roles
    if not chat:
        raise RowProblem("bad_turn_order", "'prompt' has only a system turn; add the user turn the answers reply to")
    if chat[0] != "user":
        raise RowProblem("bad_turn_order", "'prompt' starts with an assistant turn; put the user turn first")
    if roles[-1] != "user":
        raise RowProblem(
            "bad_turn_order",
            f"'prompt' ends with a {roles[-1]} turn; it must end on the user turn that 'chosen' and 'rejected' "
            "answer (move a final assistant turn into the answers, or drop it)",
        )
    return tuple(messages)


def _answer(value: Any, key: str) -> str:
    if isinstance(value, list):
        if len(value) != 1:
            raise RowProblem(
                "bad_answer",
                f"{key!r} is a list of {len(value)} messages; give one assistant answer: {ANSWER_SHAPES}",
            )
        value = value[0]
    if isinstance(value, dict):
        if value.get("role") != "assistant":
            raise RowProblem(
                "bad_role",
                f"{key!r} has role {value.get('role')!r}; an answer is the assistant's turn, use 'assistant'",
            )
        if "content" not in value:
            raise RowProblem("missing_field", f"{key!r} (assistant) has no 'content'; add the answer as a string")
        value = value["content"]
        if not isinstance(value, str):
            raise RowProblem(
                "non_string_content",
                f"{key!r} content is a {type(value).__name__}, not a string; flatten it to text",
            )
    if not isinstance(value, str):
        raise RowProblem("bad_answer", f"{key!r} is a {type(value).__name__}; use {ANSWER_SHAPES}")
    if not value.strip():
        raise RowProblem("empty_content", f"{key!r} is empty; give the answer text or drop the row")
    return value
