"""What flows out of the data stage. Train and evaluate depend on these names.

Record           a validated jsonl row, normalised to chat messages (or raw text)
TokenizedExample one rendered row: token ids, labels (-100 where no loss), whether it is a replay row
PackedSequence   several examples packed into one training row, positions restarting per example,
                 or continuing behind one shared copy of the prefix they all begin with
PreparedData     train/eval examples, the golden records, the resolved max_seq_len, the report and
                 the chat template the rows were rendered with
PairRecord       a validated preference row (train.method: dpo): a prompt conversation, a chosen and
                 a rejected assistant answer
TokenizedPair    one rendered pair: the prompt's tokens and each answer's tokens after it
PreparedPairs    train/eval pairs, the resolved max_seq_len, the report and the chat template (DPO)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

IGNORE_INDEX = -100  # label value that carries no loss (torch cross_entropy's ignore_index)

Message = dict[str, str]


@dataclass(frozen=True)
class Record:
    """A validated row. Chat-like shapes (messages, prompt/completion, alpaca, sharegpt) become
    `messages`; a `text` row keeps `text` and trains on every token."""

    source: Path
    line: int  # 1-based line in `source`
    kind: Literal["chat", "text"]
    messages: tuple[Message, ...] = ()
    text: str | None = None
    id: str | None = None
    slice: str | None = None
    checks: tuple[dict[str, Any], ...] = ()
    replay: bool = False  # from data.replay: train.replay_kl anchors its answer tokens to the base

    @property
    def where(self) -> str:
        return f"{self.source.name} line {self.line}"


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # same length; IGNORE_INDEX on prompt, system and padding tokens
    line: int  # source line, for messages that point back at the data
    truncated: bool = False  # prompt tokens were cut from the left to fit max_seq_len
    replay: bool = False  # a data.replay row: its loss tokens are the ones train.replay_kl anchors

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class PackedSequence:
    """Examples laid end to end. position_ids restart at 0 at each example, which (with
    attention_mask=None and use_cache=False) makes transformers build a block-diagonal mask.

    With `prefix_len` > 0 the row starts with one copy of the tokens every member begins with (a
    system prompt) and holds each member's remaining tokens after it, positions continuing from the
    prefix; `collate_packed` then builds the mask: each member sees the prefix and itself only.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    position_ids: tuple[int, ...]
    lengths: tuple[int, ...]  # tokens of each packed example in this row, in order (after the prefix)
    replay: tuple[bool, ...] = ()  # per packed example, aligned with lengths; () means no replay example
    prefix_len: int = 0  # tokens of the shared prefix at the start of the row (0: none)


@dataclass(frozen=True)
class PairRecord:
    """A validated preference row: `prompt` ends on a user turn; `chosen` and `rejected` are the two
    assistant answers to it, non-empty and different."""

    source: Path
    line: int  # 1-based line in `source`
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    id: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source.name} line {self.line}"


@dataclass(frozen=True)
class TokenizedPair:
    """A pair rendered in the run's chat template: `prompt_ids` is the generation prompt (the template
    with add_generation_prompt), each answer's ids are what the template renders after it for that
    assistant turn (its end-of-turn tokens included). Every answer token carries loss; no prompt token does."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    line: int
    truncated: bool = False  # prompt tokens were cut from the left to fit max_seq_len

    @property
    def length(self) -> int:
        """Tokens of the longer side, prompt included: what max_seq_len bounds."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    golden: list[Record]
    max_seq_len: int
    report: dict[str, Any] = field(default_factory=dict)
    chat_template: str = ""  # what rendered the rows (data.template, else the tokenizer's): gated and served as trained


@dataclass
class PreparedPairs:
    """What the data stage gives a DPO run: tokenized pairs, fitted to max_seq_len."""

    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    max_seq_len: int
    report: dict[str, Any] = field(default_factory=dict)
    chat_template: str = ""  # what rendered the pairs (data.template, else the tokenizer's)
