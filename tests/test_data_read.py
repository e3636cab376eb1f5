"""Reading and validating jsonl: every kind of bad row is named with its line and a fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loraforge.data import ReadResult, read_records
from loraforge.errors import DataError

BAD_ROWS = Path(__file__).parent / "data" / "bad_rows.jsonl"
EXAMPLES = Path(__file__).parents[1] / "examples" / "support_tickets"
MAX_ROW_CHARS = 300  # tests/data/bad_rows.jsonl line 26 is longer than this

# line of tests/data/bad_rows.jsonl -> (reason counted in the report, words the message must contain)
EXPECTED = {
    2: ("invalid_json", "invalid JSON"),
    3: ("not_object", "not an object"),
    4: ("unknown_shape", "unknown row shape"),
    5: ("ambiguous_shape", "keep one shape per row"),
    6: ("bad_messages", "not a list"),
    7: ("bad_messages", "'messages' is empty"),
    8: ("bad_messages", "messages[0] is not an object"),
    9: ("bad_role", "role 'bot'"),
    10: ("missing_field", "has no 'content'"),
    11: ("non_string_content", "content is a int, not a string"),
    12: ("empty_content", "content is empty"),
    13: ("no_assistant", "no assistant turn"),
    14: ("bad_turn_order", "starts with an assistant turn"),
    15: ("bad_turn_order", "only the first may be system"),
    16: ("bad_turn_order", "ends with a user turn"),
    17: ("missing_field", "'completion' is missing"),
    18: ("non_string_content", "'completion' is a list"),
    19: ("empty_content", "'text' is empty"),
    20: ("missing_field", "'output' is missing"),
    21: ("bad_role", "from='robot'"),
    22: ("empty_content", "conversations[1] 'value' is empty"),
    23: ("bad_field_type", "'id' is a dict"),
    24: ("bad_field_type", "'slice' must be a non-empty string"),
    25: ("duplicate_id", "already used on line 1"),
    26: ("too_long", "over data.max_row_chars=300"),
    27: ("not_utf8", "not UTF-8 (byte 0xe9"),
}


def _skip_read() -> ReadResult:
    return read_records(BAD_ROWS, on_error="skip", max_row_chars=MAX_ROW_CHARS)


def test_bad_rows_fixture_covers_at_least_twenty_kinds() -> None:
    """The reader itself, run over the fixture, names twenty or more different problems, each with its line."""
    named = [re.fullmatch(r"bad_rows\.jsonl line (\d+): (.+)", problem) for problem in _skip_read().problems]
    assert all(named), _skip_read().problems
    lines = {int(match.group(1)) for match in named if match}
    kinds = {match.group(2).split(";")[0] for match in named if match}
    assert len(lines) >= 20 and len(kinds) >= 20, kinds


@pytest.mark.parametrize("line", sorted(EXPECTED))
def test_each_bad_row_is_named_with_its_line_and_what_is_wrong(line: int) -> None:
    result = _skip_read()
    reason, words = EXPECTED[line]
    matching = [p for p in result.problems if p.startswith(f"bad_rows.jsonl line {line}: ")]
    assert len(matching) == 1, result.problems
    assert words in matching[0]


def test_skip_mode_keeps_good_rows_and_counts_bad_ones_by_reason() -> None:
    result = _skip_read()
    assert [r.line for r in result.records] == [1]
    expected: dict[str, int] = {}
    for reason, _ in EXPECTED.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert result.skipped == expected


def test_strict_mode_raises_one_error_listing_problems_and_the_fix() -> None:
    with pytest.raises(DataError) as info:
        read_records(BAD_ROWS, on_error="strict", max_row_chars=MAX_ROW_CHARS)
    message = str(info.value)
    assert "26 bad rows" in message
    assert "bad_rows.jsonl line 2: invalid JSON" in message
    assert "... and 6 more" in message  # 20 listed, the rest counted
    assert "data.on_error=skip" in message


def test_empty_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="train.jsonl: the file is empty"):
        read_records(empty, max_row_chars=MAX_ROW_CHARS)


def test_every_row_shape_becomes_chat_messages_or_text(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"prompt": "q", "completion": "a"},
        {"instruction": "q", "input": "ctx", "output": "a"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"text": "plain document"},
    ]
    path = tmp_path / "shapes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_records(path, max_row_chars=MAX_ROW_CHARS).records
    assert [r.kind for r in records] == ["chat", "chat", "chat", "chat", "text"]
    assert records[2].messages[0] == {"role": "user", "content": "q\n\nctx"}
    assert all(r.messages[-1] == {"role": "assistant", "content": "a"} for r in records[:4])
    assert records[4].text == "plain document"


def test_golden_rows_keep_slice_and_checks_and_reject_a_check_without_type(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    good = {"prompt": "q", "completion": "a", "slice": "clean", "checks": [{"type": "json_valid"}]}
    bad = {"prompt": "q2", "completion": "a", "checks": [{"fields": ["x"]}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    result = read_records(path, on_error="skip", max_row_chars=MAX_ROW_CHARS, golden=True)
    assert result.records[0].slice == "clean"
    assert result.records[0].checks == ({"type": "json_valid"},)
    assert result.problems == [
        "golden.jsonl line 2: checks[0] has no string 'type'; name the check, e.g. \"json_valid\""
    ]


def test_bundled_example_data_reads_clean_with_hash_of_exact_bytes() -> None:
    import hashlib

    path = EXAMPLES / "train.jsonl"
    result = read_records(path, max_row_chars=200_000)
    assert (len(result.records), result.problems) == (800, [])
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    golden = read_records(EXAMPLES / "golden.jsonl", max_row_chars=200_000, golden=True)
    assert {r.slice for r in golden.records} == {"clean", "noisy"}
