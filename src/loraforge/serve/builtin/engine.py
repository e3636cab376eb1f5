"""`BuiltinEngine`: continuous batching with mixed adapters in one forward, on a worker thread.

The model runs on one worker thread so the asyncio loop stays free for the HTTP layer. Each
`generate()` call registers a sequence with its own asyncio.Queue; the worker runs scheduler steps
and, after each, hands every event it made to the callers' loops with one `call_soon_threadsafe`
per loop. Closing the iterator sets the sequence's cancel flag; the worker drops it (and frees its
row and adapter slot) before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch
from torch import nn

from loraforge.errors import ModelError
from loraforge.serve.builtin.decoder import Decoder
from loraforge.serve.builtin.kv_cache import KVCache
from loraforge.serve.builtin.lora_slots import AdapterSlots
from loraforge.serve.builtin.scheduler import Item, Scheduler, Sequence
from loraforge.serve.engine import EngineStats, GenerationRequest, TokenEvent, relay

log = logging.getLogger("loraforge.serve.builtin")

DEFAULT_MAX_BATCH = 16  # rows per decode step; past that, requests wait for a row
DEFAULT_MAX_LOADED = 8  # adapter slots stacked for the grouped LoRA matmul


@dataclass
class BuiltinStats(EngineStats):
    """EngineStats plus what the built-in engine's benchmark and logs read."""

    max_batch: int = 0
    max_loaded: int = 0
    padded_rank: int = 0  # the rank every slot is padded to (the largest loaded)
    cold_load_seconds: tuple[float, ...] = ()  # AdapterWeights -> slot, one per cold load
    evictions: int = 0
    finished: int = 0
    aborted: int = 0  # sequences dropped because their iterator was closed
    decode_steps: int = 0
    cache_rows: int = 0  # KV cache allocation now: rows x positions
    cache_positions: int = 0


def _deliver(items: list[tuple[Sequence, Item]]) -> None:
    for seq, item in items:
        seq.events.put_nowait(item)


class BuiltinEngine:
    """`Engine` over one LlamaForCausalLM base, many adapters, continuous batching."""

    name = "builtin"

    def __init__(
        self,
        model: nn.Module,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_loaded: int = DEFAULT_MAX_LOADED,
        dtype: torch.dtype | None = None,
    ) -> None:
        if max_batch < 1:
            raise ModelError(f"BuiltinEngine: max_batch={max_batch}; run at least 1 row per step")
        self.decoder = Decoder(model, dtype)
        self.slots = AdapterSlots(
            self.decoder.module_shapes, max_loaded, dtype=self.decoder.dtype, device=self.decoder.device
        )
        cache = KVCache(
            self.decoder.n_layers,
            self.decoder.n_kv_heads,
            self.decoder.head_dim,
            max_rows=max_batch,
            max_positions=self.decoder.context_length,
            dtype=self.decoder.dtype,
            device=self.decoder.device,
        )
        self._scheduler = Scheduler(self.decoder, self.slots, cache, max_batch)
        self._inbox: queue.Queue[Sequence | None] = queue.Queue()  # None wakes the worker to stop
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._work, name="builtin-engine", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Stop the worker; sequences still running or waiting end with finish "abort"."""
        if self._thread is not None:
            self._stopping.set()
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if self._thread is None:
            raise ModelError("BuiltinEngine.generate: the engine is not started; await engine.start() first")
        if not request.prompt_ids:
            raise ModelError(f"request {request.request_id}: prompt_ids is empty; send at least one token")
        seq = Sequence(request, asyncio.get_running_loop(), asyncio.Queue())
        self._inbox.put(seq)
        try:
            async for event in relay(seq.events):
                yield event
        finally:
            seq.cancelled.set()  # a no-op once finished; closed early, the worker drops the row

    def stats(self) -> BuiltinStats:
        scheduler = self._scheduler
        rows, positions = scheduler.cache.capacity
        return BuiltinStats(
            running=len(scheduler.running),
            waiting=len(scheduler.waiting) + self._inbox.qsize(),
            loaded_adapters=self.slots.loaded,
            max_batch=scheduler.max_batch,
            max_loaded=self.slots.max_loaded,
            padded_rank=self.slots.rank,
            cold_load_seconds=tuple(self.slots.load_seconds),
            evictions=self.slots.evictions,
            finished=scheduler.finished,
            aborted=scheduler.aborted,
            decode_steps=scheduler.decode_steps,
            cache_rows=rows,
            cache_positions=positions,
        )

    def _work(self) -> None:
        # inference_mode is per thread: set here, not by whoever built the engine
        with torch.inference_mode():
            while not self._stopping.is_set():
                scheduler = self._scheduler
                self._take_inbox(block=not (scheduler.running or scheduler.waiting))
                if self._stopping.is_set():
                    break
                try:
                    scheduler.step()
                except Exception as exc:  # handed to the running requests; the worker serves the next ones
                    log.exception(
                        "a built-in engine step failed; failing its %d running requests", len(scheduler.running)
                    )
                    scheduler.fail_running(exc)
                self._flush()
            self._take_inbox(block=False)
            self._scheduler.abort_all()
            self._flush()

    def _take_inbox(self, block: bool) -> None:
        try:
            seq = self._inbox.get(block=block)
            while True:
                if seq is not None:
                    self._scheduler.add(seq)
                seq = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _flush(self) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Sequence, Item]]] = {}
        for seq, item in self._scheduler.outbox:
            by_loop.setdefault(seq.loop, []).append((seq, item))
        self._scheduler.outbox.clear()
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the caller's loop closed: nobody is listening, free the rows
                for seq, _ in items:
                    seq.cancelled.set()
