"""Token ids to answer text, a piece at a time, with OpenAI stop strings.

Streaming and non-streaming answers are built by the same `TextStream`, so the streamed deltas
join to exactly the non-streamed text. Text is released only when it is final: not while the
last bytes form an incomplete UTF-8 character (byte-level BPE splits characters across
tokens), and not while the tail could still become a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"  # what decode() gives for a character whose bytes have not all arrived


class TextStream:
    """Feed token ids with `push`, get the text to send; `stopped` once a stop string appeared
    (the answer is cut before it); `finish` gives what is held back when the sequence ends."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.prefix_offset = 0  # decode from here: a few tokens of context keep spacing right
        self.read_offset = 0  # ids before this are already in `raw`
        self.raw = ""  # decoded text so far, stop strings included
        self.sent = 0  # characters of `raw` released
        self.stopped = False

    @property
    def text(self) -> str:
        """The answer released so far."""
        return self.raw[: self.sent]

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        self.raw += self._decoded_delta(final=False)
        return self._release()

    def finish(self) -> str:
        """Everything still held back (an incomplete character is sent as decode gives it)."""
        if self.stopped:
            return ""
        self.raw += self._decoded_delta(final=True)
        found = self._find_stop()
        end = found if found is not None else len(self.raw)
        self.stopped = found is not None
        piece, self.sent = self.raw[self.sent : end], max(self.sent, end)
        return piece

    def _decoded_delta(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) <= len(before) or (after.endswith(INCOMPLETE) and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)) if ids else ""

    def _release(self) -> str:
        found = self._find_stop()
        if found is not None:
            self.stopped = True
            piece, self.sent = self.raw[self.sent : found], max(self.sent, found)
            return piece
        safe = len(self.raw) - self._held_back()
        if safe <= self.sent:
            return ""
        piece, self.sent = self.raw[self.sent : safe], safe
        return piece

    def _find_stop(self) -> int | None:
        """Where the earliest stop string starts in the unreleased text (or across its edge)."""
        hits = []
        for stop in self.stop:
            at = self.raw.find(stop, max(0, self.sent - len(stop) + 1))
            if at >= 0:
                hits.append(at)
        return max(min(hits), self.sent) if hits else None

    def _held_back(self) -> int:
        """Characters at the end of `raw` that begin some stop string, so may not be sent yet."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.raw)), longest, -1):
                if self.raw.endswith(stop[:size]):
                    longest = size
                    break
        return longest
