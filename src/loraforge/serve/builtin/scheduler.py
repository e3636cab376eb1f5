"""The continuous-batching loop: between decode steps, sequences join (prefill) and leave (finish).

One `step()`: drop cancelled sequences, admit waiting ones while the batch has room and their
adapter has a slot (each admitted prompt is prefilled alone into its cache row and gives its first
token), then one decode forward over every running row at once, mixed adapters included. Runs on
the engine's worker thread only; what a step produces is queued in `outbox` for the engine to hand
to the callers' event loops.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from loraforge.errors import ModelError
from loraforge.serve.builtin.decoder import Decoder
from loraforge.serve.builtin.kv_cache import DecodeAttention, KVCache, PrefillAttention
from loraforge.serve.builtin.lora_slots import BASE, AdapterSlots
from loraforge.serve.builtin.sampling import generator_for, pick_tokens
from loraforge.serve.engine import FinishReason, GenerationRequest, TokenEvent

Item = TokenEvent | BaseException  # what a caller's queue receives


@dataclass(eq=False)
class Sequence:
    """A request in the engine, from submission to its last event."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Item]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    slot: int = BASE
    row: int = -1  # its cache row while running; -1 while waiting or done
    made: int = 0  # tokens emitted
    last_token: int = -1


class Scheduler:
    def __init__(self, decoder: Decoder, slots: AdapterSlots, cache: KVCache, max_batch: int) -> None:
        self.decoder, self.slots, self.cache, self.max_batch = decoder, slots, cache, max_batch
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # running[i].row == i, as the cache keeps rows contiguous
        self.outbox: list[tuple[Sequence, Item]] = []
        self.finished = 0
        self.aborted = 0
        self.decode_steps = 0

    def add(self, seq: Sequence) -> None:
        seq.generator = generator_for(seq.request.sampling)
        self.waiting.append(seq)

    def step(self) -> None:
        self._drop_cancelled()
        self._admit()
        if self.running:
            self._decode()

    def fail_running(self, exc: BaseException) -> None:
        """A forward raised: every running sequence gets the error; the engine carries on."""
        for seq in list(self.running):
            self.outbox.append((seq, exc))
            self._leave(seq)

    def abort_all(self) -> None:
        for seq in list(self.running) + list(self.waiting):
            self._finish(seq, "abort")
        self.waiting.clear()

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.waiting if s.cancelled.is_set()]:
            self.waiting.remove(seq)
            self.aborted += 1
        for seq in [s for s in self.running if s.cancelled.is_set()]:
            self._leave(seq)
            self.aborted += 1

    def _admit(self) -> None:
        for seq in list(self.waiting):
            if len(self.running) >= self.max_batch:
                return
            adapter = seq.request.adapter
            if adapter is not None:
                try:
                    slot = self.slots.acquire(adapter)
                except ModelError as exc:  # factors that do not fit this base: that request fails alone
                    self.waiting.remove(seq)
                    self.outbox.append((seq, exc))
                    continue
                if slot is None:
                    continue  # every slot serves a running sequence: wait for one to finish
                seq.slot = slot
            self.waiting.remove(seq)
            self._prefill(seq)

    def _prefill(self, seq: Sequence) -> None:
        prompt = seq.request.prompt_ids
        if seq.request.sampling.max_tokens < 1 or len(prompt) >= self.decoder.context_length:
            self._finish(seq, "length")
            return
        seq.row = self.cache.add_row(len(prompt))
        self.running.append(seq)
        device = self.decoder.device
        attention = PrefillAttention(self.cache, seq.row)
        logits = self.decoder.forward(
            torch.tensor([prompt], device=device),
            torch.arange(len(prompt), device=device)[None],
            attention,
            self.slots.batch([seq.slot]),
        )
        attention.commit()
        self._advance(seq, pick_tokens(logits, [seq.request.sampling], [seq.generator])[0])

    def _decode(self) -> None:
        self.cache.reserve_step()
        attention = DecodeAttention(self.cache)
        rows = list(self.running)
        logits = self.decoder.forward(
            torch.tensor([[s.last_token] for s in rows], device=self.decoder.device),
            attention.positions[:, None],
            attention,
            self.slots.batch([s.slot for s in rows]),
        )
        attention.commit()
        self.decode_steps += 1
        tokens = pick_tokens(logits, [s.request.sampling for s in rows], [s.generator for s in rows])
        for seq, token in zip(rows, tokens, strict=True):
            self._advance(seq, token)

    def _advance(self, seq: Sequence, token: int) -> None:
        sampling = seq.request.sampling
        if token in sampling.stop_token_ids:
            self._finish(seq, "stop")
            return
        self.outbox.append((seq, TokenEvent(token)))
        seq.made += 1
        seq.last_token = token
        # the context limit counts the prompt: the next token would need a position past it
        if seq.made >= sampling.max_tokens or len(seq.request.prompt_ids) + seq.made >= self.decoder.context_length:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.outbox.append((seq, TokenEvent(None, reason)))
        self.finished += 1
        self._leave(seq)

    def _leave(self, seq: Sequence) -> None:
        """Give back the sequence's adapter slot and cache row (the last row moves into it)."""
        self.slots.release(seq.slot)
        seq.slot = BASE
        if seq.row < 0:
            return
        row = seq.row
        self.cache.remove_row(row)
        last = self.running.pop()
        if last is not seq:
            self.running[row] = last
            last.row = row
        seq.row = -1
