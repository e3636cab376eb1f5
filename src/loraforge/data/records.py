"""Read a jsonl file line by line into validated `Record`s.

Every problem names the file, the line and the fix. Five row shapes are accepted and normalised
to chat messages (or raw text): messages, prompt/completion, text, alpaca and sharegpt.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from loraforge.data.types import Message, Record
from loraforge.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
Kind = Literal["chat", "text"]
SHAPE_KEYS = ("messages", "prompt", "text", "instruction", "conversations")
MAX_LISTED_PROBLEMS = 20  # a strict failure lists this many; the rest are counted, so the message stays readable


class RowProblem(Exception):
    """One bad row: a reason code (counted in the report) and a message with the fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class ReadResult:
    records: list[Record]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped (on_error=skip)
    problems: list[str] = field(default_factory=list)  # "FILE line N: what; fix", every one found
    sha256: str = ""  # of the exact file bytes
    rows_in: int = 0  # non-blank lines


def read_records(path: Path, *, on_error: str = "strict", max_row_chars: int, golden: bool = False) -> ReadResult:
    """Stream `path` once (hashing the bytes as it goes) and validate every row.

    strict: raise one DataError listing the problems (first MAX_LISTED_PROBLEMS, then a count).
    skip: drop bad rows, count them by reason in `skipped` and keep the messages in `problems`.
    """
    if on_error not in ("strict", "skip"):
        raise DataError(f"on_error={on_error!r}: use 'strict' or 'skip'")
    result = ReadResult(records=[])
    rows = read_rows(
        path,
        lambda raw, line_no: parse_row(raw, path, line_no, max_row_chars=max_row_chars, golden=golden),
        on_error=on_error,
        empty=f"{path}: the file is empty; add one JSON object per line (see docs/data.md)",
        none_valid="no valid rows among {rows_in}; fix the rows listed by on_error=strict",
    )
    result.records, result.problems, result.sha256, result.skipped, result.rows_in = rows
    return result


Row = TypeVar("Row")


def read_rows(
    path: Path, parse: Callable[[str, int], Row], *, on_error: str, empty: str, none_valid: str
) -> tuple[list[Row], list[str], str, dict[str, int], int]:
    """The shared jsonl pass: stream `path` once, hashing its bytes, parse each non-blank line with
    `parse(raw, line_no)` (which raises RowProblem), refuse duplicate ids. Returns (rows, problems,
    sha256, skipped by reason, rows_in); raises `empty` for an empty file, every problem at once in
    strict mode, and `none_valid` (formatted with rows_in) when no row is left."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; check data paths (relative to where you run loraforge)")
    rows: list[Row] = []
    problems: list[str] = []
    digest = hashlib.sha256()
    reasons: Counter[str] = Counter()
    seen_ids: dict[str, int] = {}
    rows_in = 0
    for line_no, raw, decode_problem in read_lines(path, digest):
        if not raw.strip():
            continue
        rows_in += 1
        try:
            if decode_problem is not None:
                raise RowProblem("not_utf8", decode_problem)
            row = parse(raw, line_no)
            check_unique_id(getattr(row, "id", None), line_no, seen_ids)
        except RowProblem as problem:
            reasons[problem.reason] += 1
            problems.append(f"{path.name} line {line_no}: {problem.message}")
            continue
        rows.append(row)
    if rows_in == 0:
        raise DataError(empty)
    if problems and on_error == "strict":
        raise DataError(format_problems(path, problems))
    if not rows:
        raise DataError(f"{path}: " + none_valid.format(rows_in=rows_in))
    return rows, problems, digest.hexdigest(), dict(sorted(reasons.items())), rows_in


def format_problems(path: Path, problems: list[str]) -> str:
    shown = problems[:MAX_LISTED_PROBLEMS]
    lines = [f"{path}: {len(problems)} bad row{'s' if len(problems) != 1 else ''} (data.on_error=strict):"]
    lines += [f"  - {p}" for p in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    lines.append("  fix the rows, or set data.on_error=skip to drop bad rows and count them in the report")
    return "\n".join(lines)


def read_lines(path: Path, digest: Any) -> Iterator[tuple[int, str, str | None]]:
    """Yield (line number, decoded line, decode problem or None), hashing the exact bytes."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            digest.update(raw)
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark some editors add
            try:
                yield line_no, raw.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                problem = (
                    f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); re-save the file as UTF-8"
                )
                yield line_no, "x", problem


def check_unique_id(row_id: str | None, line: int, seen_ids: dict[str, int]) -> None:
    if row_id is None:
        return
    first = seen_ids.setdefault(row_id, line)
    if first != line:
        raise RowProblem("duplicate_id", f"id {row_id!r} was already used on line {first}; ids must be unique")


def parse_row(raw: str, source: Path, line: int, *, max_row_chars: int, golden: bool = False) -> Record:
    """Validate one jsonl line and normalise it to a Record; raise RowProblem naming the fix."""
    obj = load_object(raw, max_row_chars=max_row_chars)
    shape = _shape_of(obj)
    kind, messages, text = _SHAPES[shape](obj)
    meta = _metadata(obj, golden)
    return Record(source=source, line=line, kind=kind, messages=messages, text=text, **meta)


def load_object(raw: str, *, max_row_chars: int) -> dict[str, Any]:
    """One jsonl line as a JSON object, or RowProblem: too long, invalid JSON, not an object."""
    if len(raw) > max_row_chars:
        raise RowProblem(
            "too_long",
            f"row has {len(raw):,} characters, over data.max_row_chars={max_row_chars:,}; "
            "split it, or raise data.max_row_chars if it is real",
        )
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RowProblem(
            "invalid_json", f"invalid JSON ({exc.msg} at column {exc.colno}); one object per line"
        ) from exc
    if not isinstance(obj, dict):
        raise RowProblem("not_object", f"a JSON {type(obj).__name__}, not an object; each line must be {{...}}")
    return obj


def _shape_of(obj: dict[str, Any]) -> str:
    present = [key for key in SHAPE_KEYS if key in obj]
    if not present:
        keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
        raise RowProblem(
            "unknown_shape",
            f"unknown row shape (keys: {keys}); use messages, prompt/completion, text, "
            "instruction/output (alpaca) or conversations (sharegpt)",
        )
    if len(present) > 1:
        raise RowProblem(
            "ambiguous_shape",
            f"row has {' and '.join(repr(k) for k in present)}; keep one shape per row",
        )
    return present[0]


def _string(obj: dict[str, Any], key: str, *, required: bool = True, allow_empty: bool = False) -> str:
    if key not in obj:
        if not required:
            return ""
        raise RowProblem("missing_field", f"{key!r} is missing; add it as a string")
    value = obj[key]
    if not isinstance(value, str):
        raise RowProblem("non_string_content", f"{key!r} is a {type(value).__name__}, not a string; quote it")
    if not allow_empty and not value.strip():
        raise RowProblem("empty_content", f"{key!r} is empty; give it text or drop the row")
    return value


def _from_messages(obj: dict[str, Any]) -> tuple[Kind, tuple[Message, ...], None]:
    items = obj["messages"]
    if not isinstance(items, list):
        raise RowProblem("bad_messages", f"'messages' is a {type(items).__name__}, not a list of {{role, content}}")
    messages = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RowProblem("bad_messages", f'messages[{index}] is not an object; use {{"role": ..., "content": ...}}')
        role = item.get("role")
        if role not in ROLES:
            raise RowProblem("bad_role", f"messages[{index}] has role {role!r}; use one of {', '.join(ROLES)}")
        if "content" not in item:
            raise RowProblem("missing_field", f"messages[{index}] ({role}) has no 'content'; add it as a string")
        content = item["content"]
        if not isinstance(content, str):
            raise RowProblem(
                "non_string_content",
                f"messages[{index}] ({role}) content is a {type(content).__name__}, not a string; flatten it to text",
            )
        if not content.strip():
            raise RowProblem("empty_content", f"messages[{index}] ({role}) content is empty; give it text or drop it")
        messages.append({"role": role, "content": content})
    return "chat", check_turns(messages, "messages"), None


def check_turns(messages: list[Message], name: str) -> tuple[Message, ...]:
    """Turn order every chat template accepts: system first (optional), a user turn before any
    assistant turn, and an assistant turn last (a trailing user turn would train on nothing)."""
    if not messages:
        raise RowProblem("bad_messages", f"{name!r} is empty; add a user and an assistant turn")
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise RowProblem(
            "bad_turn_order", f"a system turn at {name}[{roles.index('system', 1)}]; only the first may be system"
        )
    if "assistant" not in roles:
        raise RowProblem("no_assistant", f'{name!r} has no assistant turn; add one or use {{"text": ...}} rows')
    first_chat = roles[1:] if roles[0] == "system" else roles
    if not first_chat or first_chat[0] != "user":
        raise RowProblem("bad_turn_order", f"{name!r} starts with an assistant turn; put the user turn first")
    if roles[-1] != "assistant":
        raise RowProblem("bad_turn_order", f"{name!r} ends with a {roles[-1]} turn nothing answers; end on assistant")
    return tuple(messages)


def _from_prompt(obj: dict[str, Any]) -> tuple[Kind, tuple[Message, ...], None]:
    prompt = _string(obj, "prompt")
    completion = _string(obj, "completion")
    return "chat", ({"role": "user", "content": prompt}, {"role": "assistant", "content": completion}), None


def _from_text(obj: dict[str, Any]) -> tuple[Kind, tuple[Message, ...], str]:
    return "text", (), _string(obj, "text")


def _from_alpaca(obj: dict[str, Any]) -> tuple[Kind, tuple[Message, ...], None]:
    instruction = _string(obj, "instruction")
    extra = _string(obj, "input", required=False, allow_empty=True)
    output = _string(obj, "output")
    system = _string(obj, "system", required=False, allow_empty=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages: list[Message] = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return "chat", tuple(messages), None


def _from_sharegpt(obj: dict[str, Any]) -> tuple[Kind, tuple[Message, ...], None]:
    items = obj["conversations"]
    if not isinstance(items, list):
        raise RowProblem("bad_messages", f"'conversations' is a {type(items).__name__}, not a list of {{from, value}}")
    messages: list[Message] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RowProblem(
                "bad_messages", f'conversations[{index}] is not an object; use {{"from": ..., "value": ...}}'
            )
        speaker = item.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise RowProblem(
                "bad_role", f"conversations[{index}] has from={speaker!r}; use one of {', '.join(SHAREGPT_ROLES)}"
            )
        try:
            value = _string(item, "value")
        except RowProblem as problem:
            raise RowProblem(problem.reason, f"conversations[{index}] {problem.message}") from None
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return "chat", check_turns(messages, "conversations"), None


_SHAPES = {
    "messages": _from_messages,
    "prompt": _from_prompt,
    "text": _from_text,
    "instruction": _from_alpaca,
    "conversations": _from_sharegpt,
}


def row_id(obj: dict[str, Any]) -> str | None:
    """The optional `id` as a string (a string or an integer in the file)."""
    value = obj.get("id")
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise RowProblem("bad_field_type", f"'id' is a {type(value).__name__}; use a string or an integer")
    return None if value is None else str(value)


def _metadata(obj: dict[str, Any], golden: bool) -> dict[str, Any]:
    identifier = row_id(obj)
    slice_name = obj.get("slice")
    if slice_name is not None and (not isinstance(slice_name, str) or not slice_name.strip()):
        raise RowProblem("bad_field_type", "'slice' must be a non-empty string naming the eval slice")
    checks = obj.get("checks")
    if checks is not None and not golden:
        checks = None  # eval-only metadata is ignored in training files
    return {
        "id": identifier,
        "slice": slice_name,
        "checks": _checks(checks) if checks is not None else (),
    }


def _checks(checks: Any) -> tuple[dict[str, Any], ...]:
    """Shape only (a list of objects with a string `type`); the eval stage owns what each check means."""
    if not isinstance(checks, list):
        raise RowProblem(
            "bad_checks", f"'checks' is a {type(checks).__name__}; use a list of {{\"type\": ...}} objects"
        )
    for index, check in enumerate(checks):
        if not isinstance(check, dict):
            raise RowProblem("bad_checks", f'checks[{index}] is not an object; use {{"type": "json_valid", ...}}')
        if not isinstance(check.get("type"), str) or not check["type"].strip():
            raise RowProblem("bad_checks", f"checks[{index}] has no string 'type'; name the check, e.g. \"json_valid\"")
    return tuple(checks)
