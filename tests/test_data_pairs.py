"""Preference pairs (train.method: dpo): reading, cleaning, tokenizing and the whole stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tiny import build_tiny_tokenizer

from loraforge.config import DataSpec
from loraforge.data import (
    IGNORE_INDEX,
    PairDropped,
    PairRecord,
    clean_pairs,
    prepare_pairs,
    read_pairs,
    read_records,
    resolve_chat_template,
    tokenize_pair,
    tokenize_record,
)
from loraforge.data.chat import special_token_ids
from loraforge.data.types import Record
from loraforge.errors import DataError
from loraforge.models import load_tokenizer
from loraforge.serve.feedback import FeedbackStore

MAX_ROW_CHARS = 400
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
LONG = (  # ~80 words: one changed word alters 5 of its word 5-grams, Jaccard ~0.88 (a near duplicate)
    "my wireless earbuds arrived broken and the left one does not charge at all even after a full night "
    "on the cable that came in the box. i already tried a different socket and a different cable, and i "
    "reset them twice as the manual says. the case light blinks red three times and then nothing happens. "
    "i bought them as a gift for my sister and her birthday is next week, so i would like a replacement "
    "sent out rather than a refund if that is possible. thanks for looking into it"
)
GOOD = json.dumps({"prompt": "hello", "chosen": "hi there", "rejected": "go away", "id": "a"})
ANSWER_SHAPES = 'a string, {"role": "assistant", "content": ...} or a one-element list of it'

# (row as written to the file, the problem the reader must report for it after "pairs.jsonl line N: ")
BAD_ROWS: list[tuple[str, str]] = [
    ("{nope", "invalid JSON (Expecting property name enclosed in double quotes at column 2); one object per line"),
    ("[1, 2]", "a JSON list, not an object; each line must be {...}"),
    (
        json.dumps({"prompt": "hi", "chosen": "a"}),
        '\'rejected\' is missing; a preference row is {"prompt": ..., "chosen": ..., "rejected": ...}',
    ),
    (
        json.dumps({"messages": []}),
        "'prompt' and 'chosen' and 'rejected' are missing; "
        'a preference row is {"prompt": ..., "chosen": ..., "rejected": ...}',
    ),
    (
        json.dumps({"prompt": 3, "chosen": "a", "rejected": "b"}),
        '\'prompt\' is a int; use a string or a list of {"role", "content"} messages',
    ),
    (
        json.dumps({"prompt": "  ", "chosen": "a", "rejected": "b"}),
        "'prompt' is empty; give the user's text or drop the row",
    ),
    (
        json.dumps({"prompt": [], "chosen": "a", "rejected": "b"}),
        "'prompt' is an empty list; give at least one user turn",
    ),
    (
        json.dumps({"prompt": ["hi"], "chosen": "a", "rejected": "b"}),
        'prompt[0] is not an object; use {"role": ..., "content": ...}',
    ),
    (
        json.dumps({"prompt": [{"role": "bot", "content": "hi"}], "chosen": "a", "rejected": "b"}),
        "prompt[0] has role 'bot'; use one of system, user, assistant",
    ),
    (
        json.dumps({"prompt": [{"role": "user", "content": ["hi"]}], "chosen": "a", "rejected": "b"}),
        "prompt[0] (user) content is a list, not a string; flatten it to text",
    ),
    (
        json.dumps({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}),
        "prompt[0] (user) has no 'content'; add it as a string",
    ),
    (
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                "chosen": "a",
                "rejected": "b",
            }
        ),
        "'prompt' ends with a assistant turn; it must end on the user turn that 'chosen' and 'rejected' answer "
        "(move a final assistant turn into the answers, or drop it)",
    ),
    (
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}],
                "chosen": "a",
                "rejected": "b",
            }
        ),
        "a system turn at prompt[1]; only the first may be system",
    ),
    (
        json.dumps({"prompt": [{"role": "system", "content": "x"}], "chosen": "a", "rejected": "b"}),
        "'prompt' has only a system turn; add the user turn the answers reply to",
    ),
    (
        json.dumps(
            {
                "prompt": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "hi"}],
                "chosen": "a",
                "rejected": "b",
            }
        ),
        "'prompt' starts with an assistant turn; put the user turn first",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": " \n", "rejected": "b"}),
        "'chosen' is empty; give the answer text or drop the row",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": "a", "rejected": {"role": "assistant", "content": ""}}),
        "'rejected' is empty; give the answer text or drop the row",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": {"role": "user", "content": "a"}, "rejected": "b"}),
        "'chosen' has role 'user'; an answer is the assistant's turn, use 'assistant'",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": [{"role": "assistant", "content": "a"}] * 2, "rejected": "b"}),
        f"'chosen' is a list of 2 messages; give one assistant answer: {ANSWER_SHAPES}",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": "a", "rejected": 7}),
        f"'rejected' is a int; use {ANSWER_SHAPES}",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": {"role": "assistant"}, "rejected": "b"}),
        "'chosen' (assistant) has no 'content'; add the answer as a string",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": " Paris. ", "rejected": "Paris."}),
        "'chosen' and 'rejected' are the same text; a pair must prefer one answer over a different one, "
        "drop the row or give a different rejected answer",
    ),
    (
        json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b", "id": {"x": 1}}),
        "'id' is a dict; use a string or an integer",
    ),
    (
        json.dumps({"prompt": "hi there", "chosen": "a", "rejected": "b", "id": "a"}),
        "id 'a' was already used on line 1; ids must be unique",
    ),
    (
        json.dumps({"prompt": "x" * MAX_ROW_CHARS, "chosen": "a", "rejected": "b"}),
        "row has 447 characters, over data.max_row_chars=400; split it, or raise data.max_row_chars if it is real",
    ),
]
NOT_UTF8 = "not UTF-8 (byte 0xe9 at column 16); re-save the file as UTF-8"


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _pair(prompt: Any, chosen: Any = "hi there", rejected: Any = "go away", **extra: Any) -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra})


def _bad_file(tmp_path: Path) -> Path:
    path = _write(tmp_path / "pairs.jsonl", [GOOD] + [row for row, _ in BAD_ROWS])
    with path.open("ab") as handle:
        handle.write(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir: Path) -> Any:
    return load_tokenizer(str(tiny_base_dir))


@pytest.mark.parametrize("index", range(len(BAD_ROWS) + 1))
def test_each_bad_pair_row_is_named_with_file_line_and_fix(tmp_path: Path, index: int) -> None:
    result = read_pairs(_bad_file(tmp_path), max_row_chars=MAX_ROW_CHARS, on_error="skip")
    line = index + 2  # line 1 is the good row
    expected = BAD_ROWS[index][1] if index < len(BAD_ROWS) else NOT_UTF8
    assert f"pairs.jsonl line {line}: {expected}" in result.problems, result.problems


def test_skip_keeps_good_pairs_and_counts_bad_ones_by_reason(tmp_path: Path) -> None:
    result = read_pairs(_bad_file(tmp_path), max_row_chars=MAX_ROW_CHARS, on_error="skip")
    assert [r.line for r in result.records] == [1]
    assert len(result.problems) == len(BAD_ROWS) + 1 == sum(result.skipped.values())
    assert result.skipped["identical_answers"] == 1 and result.skipped["not_utf8"] == 1
    assert result.rows_in == len(BAD_ROWS) + 2 and len(result.sha256) == 64


def test_strict_raises_one_error_listing_twenty_problems_and_a_count(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        read_pairs(_bad_file(tmp_path), max_row_chars=MAX_ROW_CHARS, on_error="strict")
    message = str(caught.value)
    assert f"{len(BAD_ROWS) + 1} bad rows (data.on_error=strict)" in message
    assert message.count("  - pairs.jsonl line ") == 20
    assert f"... and {len(BAD_ROWS) + 1 - 20} more" in message
    assert "data.on_error=skip" in message


def test_an_empty_pairs_file_is_an_error_in_both_modes(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.jsonl", ["", "  "])
    for mode in ("strict", "skip"):
        with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
            read_pairs(empty, max_row_chars=MAX_ROW_CHARS, on_error=mode)


def test_skip_with_no_valid_pair_left_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ["{nope", "[1]"])
    with pytest.raises(DataError, match="no valid pairs among 2 rows"):
        read_pairs(path, max_row_chars=MAX_ROW_CHARS, on_error="skip")


def test_the_feedback_dpo_export_reads_as_pairs(tmp_path: Path) -> None:
    with FeedbackStore(tmp_path / "state" / "feedback.sqlite3") as store:
        store.record_completion("c1", "acme", "bot", CHAT, "Lyon.", now=1e9)
        store.add_feedback("c1", "acme", -1, edited="Paris.", now=1e9)
        store.record_completion("c2", "acme", "bot", "Once upon", " a time there was a fox.", now=1e9 + 1)
        store.record_completion("c3", "acme", "bot", "Once upon", " the end.", now=1e9 + 2)
        store.add_feedback("c2", "acme", 1, now=1e9)
        store.add_feedback("c3", "acme", -1, now=1e9)
        report = store.export_dpo("acme", tmp_path / "pairs.jsonl")
    result = read_pairs(tmp_path / "pairs.jsonl", max_row_chars=MAX_ROW_CHARS, on_error="strict")
    assert report.pairs == len(result.records) == 2
    edited, rated = result.records
    assert (edited.prompt, edited.chosen, edited.rejected) == (tuple(CHAT), "Paris.", "Lyon.")
    assert rated.prompt == ({"role": "user", "content": "Once upon"},)
    assert (rated.chosen, rated.rejected) == (" a time there was a fox.", " the end.")  # whitespace kept


def test_answers_may_be_assistant_messages_as_trl_writes_them(tmp_path: Path) -> None:
    rows = [
        _pair(CHAT, [{"role": "assistant", "content": "Paris."}], [{"role": "assistant", "content": "Lyon."}]),
        _pair("hi", {"role": "assistant", "content": "hello"}, "go away", id=7),
    ]
    result = read_pairs(_write(tmp_path / "trl.jsonl", rows), max_row_chars=MAX_ROW_CHARS, on_error="strict")
    assert [(r.chosen, r.rejected, r.id) for r in result.records] == [
        ("Paris.", "Lyon.", None),
        ("hello", "go away", "7"),
    ]


def _records(tmp_path: Path, rows: list[str], name: str = "pairs.jsonl") -> list[PairRecord]:
    return read_pairs(_write(tmp_path / name, rows), max_row_chars=10_000, on_error="strict").records


def _golden(tmp_path: Path, prompts: list[str]) -> list[Record]:
    rows = [
        json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ref"}]})
        for p in prompts
    ]
    return read_records(_write(tmp_path / "golden.jsonl", rows), max_row_chars=10_000, golden=True).records


def test_exact_and_near_duplicate_pairs_are_dropped_keeping_the_first(tmp_path: Path) -> None:
    records = _records(
        tmp_path,
        [
            _pair(LONG, "a replacement is on its way", "no"),
            _pair("Hello  THERE", "hi", "bye"),
            _pair(LONG.replace("night", "nite"), "a replacement is on its way", "no"),  # near: one word differs
            _pair("hello there", "Hi", "bye"),  # exact after case and whitespace folding
            _pair("something else", "hi", "bye"),
        ],
    )
    kept, dropped, examples = clean_pairs(records, [], 0.85)
    assert [r.line for r in kept] == [1, 2, 5]
    assert dropped == {"exact_duplicate": 1, "near_duplicate": 1}
    assert examples["near_duplicate"] == [{"line": 3, "duplicate_of": 1, "kind": "near"}]
    assert examples["exact_duplicate"] == [{"line": 4, "duplicate_of": 2, "kind": "exact"}]


def test_pairs_sharing_prompt_and_chosen_but_not_rejected_are_all_kept(tmp_path: Path) -> None:
    """What the feedback export writes for one upvoted and several downvoted answers to one prompt."""
    rejected = ["the left bud is fine, try again", "we cannot help with that", "please buy a new pair"]
    records = _records(tmp_path, [_pair(LONG, "a replacement is on its way", r) for r in rejected])
    kept, dropped, _ = clean_pairs(records, [], 0.85)
    assert len(kept) == 3 and not dropped


def test_pairs_whose_prompt_copies_a_golden_prompt_are_dropped_as_leaked(tmp_path: Path) -> None:
    golden = _golden(tmp_path, [LONG, "What is the capital of France?"])
    records = _records(
        tmp_path,
        [
            _pair("What is the capital of france?", "Paris", "Lyon"),  # exact after folding
            _pair(LONG.replace("sister", "brother"), "sorry", "no"),  # near
            _pair([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]),
        ],
    )
    kept, dropped, examples = clean_pairs(records, golden, 0.85)
    assert [r.line for r in kept] == [3]
    assert dropped == {"leaked": 2}
    assert examples["leaked"] == [
        {"line": 1, "duplicate_of": 2, "kind": "exact"},
        {"line": 2, "duplicate_of": 1, "kind": "near"},
    ]


def _full_ids(tokenizer: Any, record: PairRecord, answer: str) -> list[int]:
    messages = [*record.prompt, {"role": "assistant", "content": answer}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


@pytest.mark.parametrize("base", ["tiny_base_dir", "tiny_llama3_dir"])
def test_prompt_and_answer_ids_are_the_whole_conversations_tokens_through_end_of_turn(
    tmp_path: Path, base: str, request: pytest.FixtureRequest
) -> None:
    tokenizer = load_tokenizer(str(request.getfixturevalue(base)))
    template = resolve_chat_template(tokenizer)
    [record] = _records(tmp_path, [_pair(CHAT, "Paris, of course.", "Lyon.")])
    pair = tokenize_pair(tokenizer, record, template, 512)
    generation = tokenizer.apply_chat_template(list(record.prompt), add_generation_prompt=True, tokenize=False)
    assert list(pair.prompt_ids) == tokenizer(generation, add_special_tokens=False)["input_ids"]
    for answer, ids in ((record.chosen, pair.chosen_ids), (record.rejected, pair.rejected_ids)):
        full = _full_ids(tokenizer, record, answer)
        assert full[: len(pair.prompt_ids) + len(ids)] == [*pair.prompt_ids, *ids]
        assert ids[-1] in special_token_ids(tokenizer)  # the end-of-turn marker closes the answer
        # the same tokens an SFT row of this conversation trains on
        sft = tokenize_record(
            Record(
                source=record.source,
                line=1,
                kind="chat",
                messages=(*record.prompt, {"role": "assistant", "content": answer}),
            ),
            tokenizer,
            max_seq_len=None,
            chat_template=template,
        )
        assert [t for t, label in zip(sft.input_ids, sft.labels, strict=True) if label != IGNORE_INDEX] == list(ids)
    assert not pair.truncated


def test_a_template_that_does_not_grow_turn_by_turn_is_refused_naming_the_line(tmp_path: Path, tokenizer: Any) -> None:
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>bot\n' }}{% endif %}"
    )
    records = _records(tmp_path, [GOOD, _pair("second")])
    with pytest.raises(DataError, match=r"pairs\.jsonl line 2: the chat template's generation prompt"):
        tokenize_pair(tokenizer, records[1], template, 512)


def test_a_pair_whose_answer_merges_with_the_prompt_tokens_is_dropped_naming_the_line(tmp_path: Path) -> None:
    template = (  # no separator between the assistant header and the answer: "assistant" + "ance" re-tokenizes
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant' }}{% endif %}"
    )
    tokenizer = build_tiny_tokenizer(template)
    [record] = _records(tmp_path, [_pair("hi", "ance", "x")])
    with pytest.raises(PairDropped, match=r"pairs\.jsonl line 1: the tokenizer merges .* 'chosen' answer") as caught:
        tokenize_pair(tokenizer, record, template, 512)
    assert caught.value.reason == "token_boundary"


def test_a_long_prompt_loses_tokens_from_the_left_and_answers_stay_whole(tmp_path: Path, tokenizer: Any) -> None:
    template = resolve_chat_template(tokenizer)
    [record] = _records(tmp_path, [_pair(LONG, "a replacement is on its way", "no")])
    whole = tokenize_pair(tokenizer, record, template, 512)
    cut = tokenize_pair(tokenizer, record, template, 40)
    assert whole.length > 40 and cut.length == 40 and cut.truncated
    assert (cut.chosen_ids, cut.rejected_ids) == (whole.chosen_ids, whole.rejected_ids)
    assert whole.prompt_ids[-len(cut.prompt_ids) :] == cut.prompt_ids


def test_an_answer_that_alone_fills_max_seq_len_is_dropped(tmp_path: Path, tokenizer: Any) -> None:
    template = resolve_chat_template(tokenizer)
    [record] = _records(tmp_path, [_pair("hi", LONG, "no")])
    answer = len(tokenize_pair(tokenizer, record, template, 512).chosen_ids)
    assert tokenize_pair(tokenizer, record, template, answer + 1).prompt_ids  # one prompt token still fits
    with pytest.raises(PairDropped, match=r"pairs\.jsonl line 1: the longer answer .* max_seq_len=") as caught:
        tokenize_pair(tokenizer, record, template, answer)
    assert caught.value.reason == "answer_too_long"


def _spec(train: Path, **overrides: Any) -> DataSpec:
    return DataSpec(train=train, replay=None, **overrides)


def _numbered(n: int) -> list[str]:
    return [
        _pair(f"order {i} arrived broken {i * 7}", f"sorry, a new one ships today {i}", f"not our problem {i}")
        for i in range(n)
    ]


def test_eval_split_holds_the_fraction_at_least_one_and_is_fixed_by_the_seed(tmp_path: Path, tokenizer: Any) -> None:
    spec = _spec(_write(tmp_path / "pairs.jsonl", _numbered(12)), eval_fraction=0.25)
    held = {
        seed: [p.line for p in prepare_pairs(spec, tokenizer, seed=seed, context_length=512, golden=[]).eval]
        for seed in (0, 1, 2)
    }
    assert all(len(lines) == 3 for lines in held.values())
    assert [p.line for p in prepare_pairs(spec, tokenizer, seed=0, context_length=512, golden=[]).eval] == held[0]
    assert len({tuple(lines) for lines in held.values()}) > 1  # the seed decides which pairs
    tiny = _spec(spec.train, eval_fraction=0.01)
    assert len(prepare_pairs(tiny, tokenizer, seed=0, context_length=512, golden=[]).eval) == 1


def test_prepare_reports_reads_drops_lengths_and_that_pii_is_not_applied(tmp_path: Path, tokenizer: Any) -> None:
    rows = [*_numbered(8), _numbered(1)[0], _pair("What is the capital of France?", "Paris", "Lyon"), "{nope"]
    spec = _spec(_write(tmp_path / "pairs.jsonl", rows), on_error="skip")
    data = prepare_pairs(
        spec, tokenizer, seed=0, context_length=512, golden=_golden(tmp_path, ["what is the capital of  FRANCE?"])
    )
    report = data.report
    assert report["rows_in"] == 11
    assert report["dropped"] == {"exact_duplicate": 1, "invalid_json": 1, "leaked": 1}
    assert report["rows_kept"] == len(data.train) + len(data.eval) == 8
    assert report["leaked_rows"] == [{"line": 10, "duplicate_of": 1, "kind": "exact"}]
    assert report["pii"] == "not applied to preference pairs"
    assert data.max_seq_len == report["max_seq_len"] == 64  # auto: p95 rounded up to 64
    assert report["percentiles"]["max"] == max(p.length for p in data.train + data.eval) <= data.max_seq_len
    assert report["truncated"] == 0 and report["problems"] == [f"pairs.jsonl line 11: {BAD_ROWS[0][1]}"]
    assert data.chat_template == resolve_chat_template(tokenizer)


def test_prepare_with_a_fixed_max_seq_len_truncates_and_drops_what_cannot_fit(tmp_path: Path, tokenizer: Any) -> None:
    rows = [*_numbered(4), _pair(LONG, "ok", "no"), _pair("hi", LONG, "no")]
    data = prepare_pairs(
        _spec(_write(tmp_path / "p.jsonl", rows), max_seq_len=64), tokenizer, seed=0, context_length=512, golden=[]
    )
    assert data.max_seq_len == 64 and all(p.length <= 64 for p in data.train + data.eval)
    assert data.report["dropped"] == {"answer_too_long": 1}
    assert data.report["truncated"] == 1
    assert any("p.jsonl line 6: the longer answer" in problem for problem in data.report["problems"])


def test_prepare_uses_data_eval_and_strict_lists_the_problems_of_both_files(tmp_path: Path, tokenizer: Any) -> None:
    train = _write(tmp_path / "train.jsonl", _numbered(5))
    held = _write(tmp_path / "eval.jsonl", _numbered(2))
    data = prepare_pairs(_spec(train, eval=held), tokenizer, seed=0, context_length=512, golden=[])
    assert (len(data.train), len(data.eval), data.report["split"]["eval_source"]) == (5, 2, str(held))
    _write(train, [*_numbered(5), "[1]"])
    _write(held, ["{nope", *_numbered(2)])
    with pytest.raises(DataError) as caught:
        prepare_pairs(_spec(train, eval=held), tokenizer, seed=0, context_length=512, golden=[])
    assert "train.jsonl line 6: a JSON list" in str(caught.value) and "eval.jsonl line 1: invalid JSON" in str(
        caught.value
    )
