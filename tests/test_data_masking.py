"""Labels: only assistant content and its closing end-of-turn token carry loss, on two templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loraforge.data import IGNORE_INDEX, render_marked, tokenize_record
from loraforge.data.chat import RowTooLong, resolve_chat_template
from loraforge.data.types import Record, TokenizedExample
from loraforge.errors import DataError

SYSTEM = {"role": "system", "content": "You answer in json."}
MULTI_TURN = (
    SYSTEM,
    {"role": "user", "content": "what is the capital of france"},
    {"role": "assistant", "content": "paris"},
    {"role": "user", "content": "and the order id"},
    {"role": "assistant", "content": '{"a": 1} ORD-12345'},
)
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


@pytest.fixture(params=["chatml", "llama3"])
def template_tokenizer(
    request: pytest.FixtureRequest, tiny_base_dir: Path, tiny_llama3_dir: Path
) -> tuple[str, object]:
    directory = tiny_base_dir if request.param == "chatml" else tiny_llama3_dir
    return request.param, AutoTokenizer.from_pretrained(str(directory))


def _chat(*messages: dict[str, str]) -> Record:
    return Record(source=Path("t.jsonl"), line=7, kind="chat", messages=tuple(messages))


def _trained_text(example: TokenizedExample, tokenizer: object) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(example.input_ids, example.labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained and not previous:
            runs.append([])
        if trained:
            runs[-1].append(token)
        previous = trained
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]  # type: ignore[attr-defined]


def test_every_assistant_turn_and_its_end_of_turn_token_are_trained(template_tokenizer: tuple[str, object]) -> None:
    name, tokenizer = template_tokenizer
    example = tokenize_record(_chat(*MULTI_TURN), tokenizer, train_on="all", max_seq_len=None)
    eot = END_OF_TURN[name]
    assert _trained_text(example, tokenizer) == [f"paris{eot}", f'{{"a": 1}} ORD-12345{eot}']


def test_train_on_last_trains_only_the_final_assistant_turn(template_tokenizer: tuple[str, object]) -> None:
    name, tokenizer = template_tokenizer
    example = tokenize_record(_chat(*MULTI_TURN), tokenizer, train_on="last", max_seq_len=None)
    assert _trained_text(example, tokenizer) == [f'{{"a": 1}} ORD-12345{END_OF_TURN[name]}']


def test_answer_repeated_in_the_prompt_is_not_trained_in_the_prompt(template_tokenizer: tuple[str, object]) -> None:
    name, tokenizer = template_tokenizer
    record = _chat({"role": "user", "content": "say paris"}, {"role": "assistant", "content": "paris"})
    example = tokenize_record(record, tokenizer, max_seq_len=None)
    assert _trained_text(example, tokenizer) == [f"paris{END_OF_TURN[name]}"]


def test_prompt_completion_trains_the_completion_only(template_tokenizer: tuple[str, object]) -> None:
    name, tokenizer = template_tokenizer
    record = _chat({"role": "user", "content": "help me"}, {"role": "assistant", "content": "thanks customer"})
    example = tokenize_record(record, tokenizer, max_seq_len=None)
    assert _trained_text(example, tokenizer) == [f"thanks customer{END_OF_TURN[name]}"]


def test_text_rows_train_every_token_and_end_with_eos(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    record = Record(source=Path("t.jsonl"), line=1, kind="text", text="the order arrived broken")
    example = tokenize_record(record, tokenizer, max_seq_len=None)
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_answer(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    long_prompt = " ".join(["the order arrived broken please help"] * 20)
    record = _chat({"role": "user", "content": long_prompt}, {"role": "assistant", "content": "refund"})
    full = tokenize_record(record, tokenizer, max_seq_len=None)
    cut = tokenize_record(record, tokenizer, max_seq_len=32)
    assert len(cut.input_ids) == 32 and cut.truncated
    assert cut.input_ids == full.input_ids[-32:]
    assert cut.n_loss_tokens == full.n_loss_tokens


def test_an_answer_longer_than_max_seq_len_is_refused_not_cut(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    record = _chat({"role": "user", "content": "q"}, {"role": "assistant", "content": "paris france " * 30})
    with pytest.raises(RowTooLong, match="line 7: the trained tokens alone"):
        tokenize_record(record, tokenizer, max_seq_len=16)


def test_render_marked_brackets_trained_tokens_when_piped(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    record = _chat({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    example = tokenize_record(record, tokenizer, max_seq_len=None)
    assert render_marked(example, tokenizer, color=False).endswith("<|im_start|>assistant\n[[hello<|im_end|>]]\n")
    assert "\x1b[1;32mhello<|im_end|>\x1b[0m" in render_marked(example, tokenizer, color=True)


def test_a_base_without_chat_template_needs_data_template(tiny_base_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="set data.template"):
        resolve_chat_template(tokenizer)
    template = tmp_path / "chatml.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    assert resolve_chat_template(tokenizer, template).startswith("{% for m in messages %}")
