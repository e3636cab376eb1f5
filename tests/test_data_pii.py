"""PII scanning: look-alikes stay, real PII goes, rows that copy a redacted value are dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loraforge.cli import main
from loraforge.config import DataSpec
from loraforge.data import REPORT_NAME, prepare_data
from loraforge.data.pii import PiiScanner, scan_records
from loraforge.data.types import Record

SETS = Path(__file__).parent / "data"


def _set(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (SETS / name).read_text(encoding="utf-8").splitlines() if line]


def _chat(user: str, answer: str, line: int = 1) -> Record:
    messages = ({"role": "user", "content": user}, {"role": "assistant", "content": answer})
    return Record(source=Path("t.jsonl"), line=line, kind="chat", messages=messages)


def _row(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner()


def test_lookalikes_of_dates_ids_versions_prices_and_numbers_are_not_touched(scanner: PiiScanner) -> None:
    lookalikes = _set("pii_lookalikes.jsonl")
    assert len(lookalikes) >= 40
    touched = [(row["text"], [f.entity_type for f in scanner.find(row["text"])]) for row in lookalikes]
    assert [t for t in touched if t[1]] == []


def test_every_real_pii_string_is_replaced_by_its_type(scanner: PiiScanner) -> None:
    real = _set("pii_real.jsonl")
    assert len(real) >= 30
    redacted = [(row, scanner.redact(row["text"], scanner.find(row["text"]))) for row in real]
    missed = [(row["text"], out) for row, out in redacted if row["value"] in out or f"<{row['entity']}>" not in out]
    assert missed == []


def test_answer_repeating_a_redacted_prompt_value_depends_on_it(scanner: PiiScanner) -> None:
    reformatted = _chat("Call me on +1 (415) 555-0132. Which number did I give?", "415.555.0132")
    recased = _chat("Write to jane.doe@example.com", '{"email": "Jane.Doe@example.com"}')
    only_the_answer_found = _chat("Order ORD-2024-118833 is late, my number is 4155550132", "Call +1 415 555 0132.")
    result = scan_records([reformatted, recased, only_the_answer_found], scanner, redact=True)
    assert result.dropped == [0, 1, 2]


def test_pii_on_one_side_only_is_redacted_and_the_row_kept(scanner: PiiScanner) -> None:
    rows = [
        _chat("Mail me at jane.doe@example.com, my parcel is broken", '{"issue": "damaged"}'),
        _chat("Where do I send returns?", "Send them to returns@example.com."),
        _chat("What is the ISO date for 12.12.1953?", "1953-12-12"),
    ]
    result = scan_records(rows, scanner, redact=True)
    assert result.dropped == []
    assert [m["content"] for r in result.records for m in r.messages] == [
        "Mail me at <EMAIL_ADDRESS>, my parcel is broken",
        '{"issue": "damaged"}',
        "Where do I send returns?",
        "Send them to <EMAIL_ADDRESS>.",
        "What is the ISO date for 12.12.1953?",
        "1953-12-12",
    ]


def test_report_mode_drops_no_row(scanner: PiiScanner) -> None:
    result = scan_records([_chat("call +1 415 555 0132", "+1 415 555 0132")], scanner, redact=False)
    assert (result.dropped, result.rows_with_pii) == ([], 1)


def test_prepare_reports_rows_by_recognizer_and_dependent_rows_dropped(
    tmp_path: Path, tiny_base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "t.jsonl"
    rows = [
        _row("mail me at jane.doe@example.com or call +1 415 555 0100", "refund"),
        _row("my number is (415) 555-0132, please repeat it", "(415) 555-0132"),
        _row("card 4111 1111 1111 1111 was charged twice", "refund"),
        _row("order ORD-2024-118833 from 12.12.2023 arrived broken", '{"order_id": "ORD-2024-118833"}'),
        _row("nothing personal here", "ok"),
    ]
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = tmp_path / "cfg.yaml"
    config.write_text(f"base: {tiny_base_dir}\noutput: {tmp_path / 'run'}\ndata:\n  train: {train}\n")
    assert main(["prepare", str(config)]) == 0
    report = json.loads((tmp_path / "run" / REPORT_NAME).read_text())
    assert report["dropped"] == {"pii_dependent": 1}
    assert report["rows_kept"] == 4
    pii = report["pii"]
    assert (pii["dropped_dependent"], pii["dropped_examples"]) == (1, [{"line": 2, "entities": ["PHONE_NUMBER"]}])
    assert pii["rows_by_recognizer"] == {
        "CreditCardRecognizer": 1,
        "OfflineEmailRecognizer": 1,
        "PlausiblePhoneRecognizer": 2,
    }
    out = " ".join(capsys.readouterr().out.split())
    assert "PlausiblePhoneRecognizer 2" in out and "pii_dependent 1" in out


def test_kept_rows_keep_order_ids_and_dates_word_for_word(tmp_path: Path, tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    rows = [_row("What is the ISO date for 12.12.1953? Ticket TCK-99812", "1953-12-12"), _row("hi", "hello")]
    train = tmp_path / "t.jsonl"
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = DataSpec(replay=None, train=train, eval_fraction=0.5)
    data = prepare_data(spec, tokenizer, seed=0, context_length=512, out_dir=None, cache_dir=None)
    text = next(tokenizer.decode(ex.input_ids) for ex in data.train + data.eval if ex.line == 1)
    assert "12.12.1953? Ticket TCK-99812" in text and "<PHONE_NUMBER>" not in text
