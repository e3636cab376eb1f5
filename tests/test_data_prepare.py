"""The whole data stage: hygiene, leakage, split, report, cache, and the `prepare` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from loraforge.cli import main
from loraforge.config import DataSpec
from loraforge.data import REPORT_NAME, prepare_data
from loraforge.errors import DataError

EXAMPLES = Path(__file__).parents[1] / "examples" / "support_tickets"
BAD_ROWS = Path(__file__).parent / "data" / "bad_rows.jsonl"
LONG = (  # ~80 words: one changed word alters 5 of its word 5-grams, Jaccard ~0.88 (a near duplicate)
    "my wireless earbuds arrived broken and the left one does not charge at all even after a full night "
    "on the cable that came in the box. i already tried a different socket and a different cable, and i "
    "reset them twice as the manual says. the case light blinks red three times and then nothing happens. "
    "i bought them as a gift for my sister and her birthday is next week, so i would like a replacement "
    "sent out rather than a refund if that is possible. thanks for looking into it"
)


def _row(user: str, answer: str = "refund", **extra: Any) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}
    )


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_base_dir))


def _prepare(spec: DataSpec, tokenizer: Any, out: Path | None = None, cache: Path | None = None) -> Any:
    return prepare_data(spec, tokenizer, seed=0, context_length=512, out_dir=out, cache_dir=cache)


def test_train_rows_duplicating_golden_rows_are_removed_and_listed(tmp_path: Path, tokenizer: Any) -> None:
    golden = _write(tmp_path / "golden.jsonl", [_row(LONG, slice="clean"), _row("what is the capital of france")])
    train = _write(
        tmp_path / "train.jsonl",
        [
            _row("hello my order is late"),
            _row(LONG.upper() + "  "),  # exact after normalisation
            _row(LONG.replace("night", "nite")),  # near: one word differs
            _row("please help with billing"),
            _row("thanks for the help"),
        ],
    )
    data = _prepare(DataSpec(replay=None, train=train, golden=golden, pii="off"), tokenizer)
    assert data.report["leaked"] == 2
    assert data.report["leaked_rows"] == [
        {"line": 2, "duplicate_of": 1, "kind": "exact"},
        {"line": 3, "duplicate_of": 1, "kind": "near"},
    ]
    assert {ex.line for ex in data.train + data.eval} == {1, 4, 5}


def test_exact_and_near_duplicates_in_train_are_dropped_keeping_the_first(tmp_path: Path, tokenizer: Any) -> None:
    rows = [_row(LONG), _row("hi there"), _row(LONG.replace("full", "whole")), _row("Hi  there"), _row("other")]
    data = _prepare(DataSpec(replay=None, train=_write(tmp_path / "t.jsonl", rows), pii="off"), tokenizer)
    assert data.report["duplicates"]["examples"] == [
        {"line": 3, "duplicate_of": 1, "kind": "near"},
        {"line": 4, "duplicate_of": 2, "kind": "exact"},
    ]
    assert data.report["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}


def test_eval_split_is_deterministic_by_seed_and_holds_at_least_one_row(tmp_path: Path, tokenizer: Any) -> None:
    train = _write(tmp_path / "t.jsonl", [_row(f"order {i} arrived broken {i * 7}") for i in range(12)])
    spec = DataSpec(replay=None, train=train, pii="off", eval_fraction=0.01)
    first = _prepare(spec, tokenizer)
    assert len(first.eval) == 1
    assert [ex.line for ex in _prepare(spec, tokenizer).eval] == [ex.line for ex in first.eval]


def test_replay_rows_join_training_only_after_the_same_hygiene(tmp_path: Path, tokenizer: Any) -> None:
    golden = _write(tmp_path / "golden.jsonl", [_row(LONG, slice="clean")])
    train = _write(tmp_path / "t.jsonl", [_row(f"order {i} arrived broken {i * 7}") for i in range(10)])
    replay = _write(
        tmp_path / "replay.jsonl",
        [
            _row("what is the capital of france", "Paris."),
            _row("What is the capital of  France", "Paris."),  # exact duplicate after normalisation
            _row(LONG.replace("night", "nite"), "x"),  # near copy of a golden row: leaked
            _row("how do i boil an egg", "Put it in boiling water for eight minutes."),
        ],
    )
    spec = DataSpec(train=train, golden=golden, replay=replay, pii="off", eval_fraction=0.2)
    data = _prepare(spec, tokenizer, out=tmp_path / "run")
    split = {"train": 8 + 2, "eval": 2, "eval_source": "held out", "replay": 2, "replay_distinct": 2}
    assert data.report["split"] == split
    assert data.report["dropped"] == {"replay_exact_duplicate": 1, "replay_leaked": 1}
    assert data.report["rows_kept"] == 10 and len(data.report["replay_sha256"]) == 64
    trained = [tokenizer.decode(ex.input_ids) for ex in data.train]
    held_out = [tokenizer.decode(ex.input_ids) for ex in data.eval]
    for question in ("capital of france", "boil an egg"):  # kept replay rows train, once; none is held out
        assert sum(question in t.lower() for t in trained) == 1
        assert not any(question in t.lower() for t in held_out)
    without = _prepare(DataSpec(replay=None, train=train, golden=golden, pii="off", eval_fraction=0.2), tokenizer)
    assert [ex.line for ex in without.eval] == [ex.line for ex in data.eval]  # same split with or without
    half = _prepare(spec.model_copy(update={"replay_ratio": 0.5}), tokenizer)  # 8 task rows: 8 replay rows
    assert (half.report["split"]["replay"], half.report["split"]["replay_distinct"]) == (8, 2)
    trained = [tokenizer.decode(ex.input_ids).lower() for ex in half.train]
    assert [sum(q in t for t in trained) for q in ("capital of france", "boil an egg")] == [4, 4]


def test_replay_examples_are_tagged_and_the_tag_survives_the_cache(tmp_path: Path, tokenizer: Any) -> None:
    train = _write(tmp_path / "t.jsonl", [_row(f"order {i} arrived broken {i * 7}") for i in range(6)])
    replay = _write(tmp_path / "replay.jsonl", [_row("what is the capital of france", "Paris.")])
    spec = DataSpec(train=train, replay=replay, pii="off", eval_fraction=0.2)
    first = _prepare(spec, tokenizer, cache=tmp_path / "cache")
    second = _prepare(spec, tokenizer, cache=tmp_path / "cache")
    assert second.report["cached"]
    for data in (first, second):
        tagged = [tokenizer.decode(ex.input_ids) for ex in data.train if ex.replay]
        assert len(tagged) == 1 and "capital of france" in tagged[0]
        assert not any(ex.replay for ex in data.eval)


def test_report_on_the_bundled_data_holds_counts_hashes_percentiles_and_packing(tmp_path: Path, tokenizer: Any) -> None:
    spec = DataSpec(replay=None, train=EXAMPLES / "train.jsonl", golden=EXAMPLES / "golden.jsonl")
    _prepare(spec, tokenizer, out=tmp_path)
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    for key in ("rows_in", "rows_kept", "dropped", "leaked", "max_seq_len", "packing_efficiency", "percentiles"):
        assert key in report
    assert (report["rows_in"], report["rows_kept"], report["leaked"], report["dropped"]) == (800, 800, 0, {})
    assert 0 < report["packing_efficiency"] <= 1
    assert report["max_seq_len"] % 64 == 0 and report["max_seq_len"] >= report["percentiles"]["p95"]
    assert len(report["train_sha256"]) == len(report["golden_sha256"]) == len(report["template_sha256"]) == 64


def test_second_prepare_on_unchanged_inputs_comes_from_the_cache(tmp_path: Path, tokenizer: Any) -> None:
    train = _write(tmp_path / "t.jsonl", [_row(f"order {i} arrived broken {i * 7}") for i in range(6)])
    spec = DataSpec(replay=None, train=train, pii="off")
    first = _prepare(spec, tokenizer, cache=tmp_path / "cache")
    second = _prepare(spec, tokenizer, cache=tmp_path / "cache")
    assert (first.report["cached"], second.report["cached"]) == (False, True)
    assert second.train == first.train and second.eval == first.eval


def test_strict_mode_lists_problems_of_every_file_and_writes_nothing(tmp_path: Path, tokenizer: Any) -> None:
    golden = _write(tmp_path / "golden.jsonl", ["{not json"])
    spec = DataSpec(replay=None, train=BAD_ROWS, golden=golden)
    with pytest.raises(DataError) as info:
        _prepare(spec, tokenizer, out=tmp_path / "run", cache=tmp_path / "cache")
    assert "bad_rows.jsonl line 2: invalid JSON" in str(info.value)
    assert "golden.jsonl line 1: invalid JSON" in str(info.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_pii_is_redacted_and_counted_without_any_network_call(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    rows = [
        _row("mail me at jane.doe@example.com or call +1 415 555 0100"),
        _row("card 4111 1111 1111 1111 was charged twice"),
        _row("order 40079594 arrived broken", answer='{"order_id": "40079594"}'),
        _row("no personal data here"),
    ]
    data = _prepare(DataSpec(replay=None, train=_write(tmp_path / "t.jsonl", rows), eval_fraction=0.25), tokenizer)
    assert attempts == []
    assert data.report["pii"]["counts"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    texts = {ex.line: tokenizer.decode(ex.input_ids) for ex in data.train + data.eval}
    assert "<EMAIL_ADDRESS>" in texts[1] and "jane.doe" not in texts[1] and "<PHONE_NUMBER>" in texts[1]
    assert "<CREDIT_CARD>" in texts[2]
    assert texts[3].count("40079594") == 2  # a bare 8-digit id is an order number, not a phone


def test_pii_report_mode_counts_but_keeps_the_text(tmp_path: Path, tokenizer: Any) -> None:
    rows = [_row("mail me at jane.doe@example.com"), _row("nothing to see"), _row("still nothing")]
    data = _prepare(DataSpec(replay=None, train=_write(tmp_path / "t.jsonl", rows), pii="report"), tokenizer)
    assert data.report["pii"]["counts"] == {"EMAIL_ADDRESS": 1}
    texts = [tokenizer.decode(ex.input_ids) for ex in data.train + data.eval]
    assert any("jane.doe@example.com" in t for t in texts)


def test_names_are_redacted_only_with_a_local_ner_model(tmp_path: Path, tokenizer: Any) -> None:
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Karen Rossi"}])
    nlp.to_disk(tmp_path / "ner")
    rows = [_row("regards, Karen Rossi"), _row("nothing to see"), _row("still nothing")]
    spec = DataSpec(replay=None, train=_write(tmp_path / "t.jsonl", rows), pii_ner_model=tmp_path / "ner")
    data = _prepare(spec, tokenizer)
    assert data.report["pii"]["counts"] == {"PERSON": 1}
    named = [tokenizer.decode(ex.input_ids) for ex in data.train + data.eval if ex.line == 1]
    assert "Karen Rossi" not in named[0] and "regards, <PERSON>" in named[0]
    with pytest.raises(DataError, match="not a spaCy model directory"):
        _prepare(DataSpec(replay=None, train=spec.train, pii_ner_model=tmp_path / "missing"), tokenizer)


def _config(tmp_path: Path, base: Path, train: Path) -> Path:
    config = tmp_path / "cfg.yaml"
    config.write_text(f"base: {base}\noutput: {tmp_path / 'run'}\ndata:\n  train: {train}\n  pii: 'off'\n")
    return config


def test_prepare_command_writes_the_report_and_shows_trained_tokens(
    tmp_path: Path, tiny_base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "train.jsonl"
    shutil.copy(EXAMPLES / "train.jsonl", train)
    assert main(["prepare", str(_config(tmp_path, tiny_base_dir, train)), "--show", "1"]) == 0
    assert json.loads((tmp_path / "run" / REPORT_NAME).read_text())["rows_in"] == 800
    assert '[[{"order_id": "ORD-28044"' in capsys.readouterr().out


def test_prepare_command_exits_2_on_bad_data_and_writes_nothing(
    tmp_path: Path, tiny_base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prepare", str(_config(tmp_path, tiny_base_dir, BAD_ROWS))]) == 2
    assert "bad_rows.jsonl line 13: 'messages' has no assistant turn" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
