"""The data stage on the real SmolLM2 tokenizer and template (slow: converts the base once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraforge.data import IGNORE_INDEX, tokenize_record
from loraforge.data.records import parse_row

TRAIN = Path(__file__).parents[1] / "examples" / "support_tickets" / "train.jsonl"


@pytest.mark.slow
def test_smollm2_trains_exactly_the_answer_and_its_im_end() -> None:
    from loraforge.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    line = TRAIN.read_text(encoding="utf-8").splitlines()[0]
    record = parse_row(line, TRAIN, 1, max_row_chars=200_000)
    example = tokenize_record(record, tokenizer, max_seq_len=None)
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    answer = json.loads(line)["messages"][-1]["content"]
    assert tokenizer.decode(trained, skip_special_tokens=False) == answer + "<|im_end|>"
