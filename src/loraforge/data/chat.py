"""Render a record with the base's chat template and label exactly the tokens the model should learn.

Labels come from character spans of the rendered text: for each trained assistant turn, the span
starts where the conversation rendered up to that turn *with the generation prompt* ends, and ends
where the conversation rendered *through* that turn ends. Tokens whose first character falls in
the span are trained, up to and including the first special token in it (the end-of-turn marker),
so the model learns to stop but not the newline a template adds after the marker. The content is
never searched for as a string, so repeated or template-modified content cannot mislabel a row.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from loraforge.data.records import RowProblem
from loraforge.data.types import IGNORE_INDEX, Message, Record, TokenizedExample
from loraforge.errors import DataError
from loraforge.files import sha256_text

Span = tuple[int, int]  # [start, end) character offsets in the rendered text


class RowTooLong(RowProblem):
    """The trained part of a row alone exceeds max_seq_len, so truncation would cut the answer."""


def resolve_chat_template(tokenizer: Any, template_path: Path | None = None) -> str:
    """The Jinja template to render with: `data.template` when given, else the tokenizer's own."""
    if template_path is not None:
        try:
            return template_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"data.template: cannot read {template_path} ({exc}); point it at a Jinja file") from exc
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # some tokenizers keep several named templates
        template = template.get("default")
    if not isinstance(template, str) or not template.strip():
        raise DataError(
            "the base tokenizer has no chat template; set data.template to a Jinja file "
            "(e.g. a ChatML template) so rows render the way the model will be prompted"
        )
    return template


def template_sha256(template: str) -> str:
    return sha256_text(template)


def render_text(tokenizer: Any, messages: list[Message], template: str | None, add_generation_prompt: bool) -> str:
    """The conversation as the template writes it (text, not tokens)."""
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )
    return str(text)


def render_chat(
    messages: tuple[Message, ...], tokenizer: Any, *, train_on: str = "all", chat_template: str | None = None
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character span of each trained assistant turn."""
    full = render_text(tokenizer, list(messages), chat_template, add_generation_prompt=False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        turns = turns[-1:]
    spans: list[Span] = []
    for index in turns:
        prefix = render_text(tokenizer, list(messages[:index]), chat_template, add_generation_prompt=True)
        through = render_text(tokenizer, list(messages[: index + 1]), chat_template, add_generation_prompt=False)
        if not (full.startswith(prefix) and full.startswith(through) and len(through) > len(prefix)):
            raise DataError(
                "the chat template does not render a conversation's prefix as a prefix of the whole "
                f"(assistant turn {index}), so trained tokens cannot be located safely; "
                "set data.template to a template whose output grows turn by turn"
            )
        spans.append((len(prefix), len(through)))
    return full, spans


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, token in decoder.items() if getattr(token, "special", False))
    return frozenset(ids)


def labels_from_spans(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[Span], special_ids: frozenset[int]
) -> list[int]:
    """-100 everywhere except tokens starting inside a span, through the first special token there."""
    labels = [IGNORE_INDEX] * len(input_ids)
    position = 0
    for start, end in spans:
        while position < len(offsets) and offsets[position][0] < start:
            position += 1
        while position < len(offsets) and offsets[position][0] < end:
            labels[position] = input_ids[position]
            position += 1
            if input_ids[position - 1] in special_ids:
                break  # the end-of-turn marker closes the answer; what the template adds after it is not learned
    return labels


def encode_rendered(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """One batched tokenizer call: ids and character offsets of already-rendered texts."""
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True))


def eos_id(tokenizer: Any) -> int | None:
    value = getattr(tokenizer, "eos_token_id", None)
    return value if isinstance(value, int) else None


def example_from_encoding(
    record: Record, ids: list[int], offsets: list[tuple[int, int]], spans: list[Span], tokenizer: Any
) -> TokenizedExample:
    if record.kind == "text":
        end = eos_id(tokenizer)
        ids = [*ids, end] if end is not None else list(ids)  # a document ends: the model learns where
        return TokenizedExample(input_ids=tuple(ids), labels=tuple(ids), line=record.line, replay=record.replay)
    labels = labels_from_spans(ids, offsets, spans, special_token_ids(tokenizer))
    return TokenizedExample(input_ids=tuple(ids), labels=tuple(labels), line=record.line, replay=record.replay)


def record_text(record: Record, tokenizer: Any, *, train_on: str, chat_template: str | None) -> tuple[str, list[Span]]:
    if record.kind == "text":
        return record.text or "", []
    return render_chat(record.messages, tokenizer, train_on=train_on, chat_template=chat_template)


def tokenize_record(
    record: Record,
    tokenizer: Any,
    *,
    train_on: str = "all",
    max_seq_len: int | None,
    chat_template: str | None = None,
) -> TokenizedExample:
    """Render with the chat template, tokenize once with offsets, label the trained spans, truncate.

    Raises RowTooLong when the trained tokens alone exceed max_seq_len (the answer is never cut).
    """
    if record.kind == "chat" and chat_template is None:
        chat_template = resolve_chat_template(tokenizer)
    text, spans = record_text(record, tokenizer, train_on=train_on, chat_template=chat_template)
    [(ids, offsets)] = encode_rendered(tokenizer, [text])
    example = example_from_encoding(record, ids, offsets, spans, tokenizer)
    return truncate_example(example, max_seq_len) if max_seq_len is not None else example


def truncate_example(example: TokenizedExample, max_seq_len: int) -> TokenizedExample:
    """Cut tokens from the left of the prompt; a text row (all trained) keeps its first tokens."""
    n = len(example.input_ids)
    if n <= max_seq_len:
        return example
    first_trained = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), n)
    if first_trained == 0:  # a text row: everything is trained, keep the start of the document
        return replace(
            example,
            input_ids=example.input_ids[:max_seq_len],
            labels=example.labels[:max_seq_len],
            truncated=True,
        )
    if n - first_trained > max_seq_len:
        raise RowTooLong(
            "answer_too_long",
            f"line {example.line}: the trained tokens alone ({n - first_trained}) exceed max_seq_len={max_seq_len}; "
            "shorten the answer or raise data.max_seq_len",
        )
    cut = n - max_seq_len
    return replace(example, input_ids=example.input_ids[cut:], labels=example.labels[cut:], truncated=True)


def render_marked(example: TokenizedExample, tokenizer: Any, *, color: bool) -> str:
    """The example as the model sees it, trained tokens marked: green in a terminal, [[...]] when piped."""
    pieces: list[str] = []
    run: list[int] = []
    run_trained = False

    def flush() -> None:
        if not run:
            return
        text = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if run_trained:
            text = f"\x1b[1;32m{text}\x1b[0m" if color else f"[[{text}]]"
        pieces.append(text)
        run.clear()

    for token, label in zip(example.input_ids, example.labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained != run_trained:
            flush()
            run_trained = trained
        run.append(token)
    flush()
    return "".join(pieces)
