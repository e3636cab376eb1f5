"""The PEFT baseline engine: one request at a time, PEFT `set_adapter` per request.

Every request runs alone in one worker thread with a manual decode loop over the KV cache, so
its tokens reach the HTTP layer as they are made. It is the benchmark the built-in engine is
measured against, and the engine the HTTP tests use: correct first, fast never.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from loraforge.errors import ModelError
from loraforge.serve.builtin.sampling import is_greedy, sample
from loraforge.serve.engine import AdapterWeights, EngineStats, GenerationRequest, Sampling, TokenEvent, relay

log = logging.getLogger("loraforge.serve.peft")

DEFAULT_MAX_LOADED = 8  # adapters kept injected; past that the least recently used one is deleted


@dataclass
class _Job:
    """A request in flight: its events go back to the caller's event loop through `events`."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: TokenEvent | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop closed: nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class PeftEngine:
    """`Engine` over a transformers model wrapped in PEFT, one sequence at a time."""

    name = "peft"

    def __init__(self, model: PreTrainedModel, *, max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        if max_loaded < 1:
            raise ModelError(f"PeftEngine: max_loaded={max_loaded}; keep at least 1 adapter loaded")
        self._base = model
        self._peft: PeftModel | None = None  # wrapped on the first adapter; the bare base needs no PEFT
        self._max_loaded = max_loaded
        self._slots: OrderedDict[str, str] = OrderedDict()  # AdapterWeights.key -> PEFT adapter name, LRU order
        self._slot_names = (f"slot{i}" for i in itertools.count())  # keys hold '.', which PEFT's ModuleDict refuses
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = 0
        self.generated_tokens = 0  # over the engine's life: what a benchmark divides by wall time
        self._context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="peft-engine", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if self._thread is None:
            raise ModelError("PeftEngine.generate: the engine is not started; await engine.start() first")
        job = _Job(request, asyncio.get_running_loop())
        self._jobs.put(job)
        try:
            async for event in relay(job.events):
                yield event
        finally:
            job.cancelled.set()  # closed early: the worker drops the sequence at its next token

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, waiting=self._jobs.qsize(), loaded_adapters=len(self._slots))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            self._running = 1
            try:
                self._run(job)
            except Exception as exc:  # handed to the request that caused it; the worker serves the next one
                log.exception("request %s failed in the PEFT engine", job.request.request_id)
                job.emit(exc)
            finally:
                self._running = 0

    def _run(self, job: _Job) -> None:
        request = job.request
        sampling = request.sampling
        generator = torch.Generator().manual_seed(sampling.seed if sampling.seed is not None else secrets.randbits(63))
        budget = sampling.max_tokens
        if self._context_length:
            budget = min(budget, self._context_length - len(request.prompt_ids))
        with torch.inference_mode(), self._adapter(request.adapter) as model:
            device = next(model.parameters()).device
            out = model(input_ids=torch.tensor([request.prompt_ids], device=device), use_cache=True)
            for made in range(budget):
                if job.cancelled.is_set():
                    return
                token = pick_token(out.logits[0, -1], sampling, generator)
                if token in sampling.stop_token_ids:
                    job.emit(TokenEvent(None, "stop"))
                    return
                job.emit(TokenEvent(token))
                self.generated_tokens += 1
                if made + 1 < budget:
                    step = torch.tensor([[token]], device=device)
                    out = model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
        job.emit(TokenEvent(None, "length"))

    @contextlib.contextmanager
    def _adapter(self, adapter: AdapterWeights | None) -> Iterator[torch.nn.Module]:
        """The model to run with `adapter` active (None: the base, PEFT's layers bypassed)."""
        if adapter is None:
            if self._peft is None:
                yield self._base
            else:
                with self._peft.disable_adapter():
                    yield self._peft
            return
        peft = self._load(adapter)
        peft.set_adapter(self._slots[adapter.key])
        yield peft

    def _load(self, adapter: AdapterWeights) -> PeftModel:
        if adapter.key in self._slots:
            self._slots.move_to_end(adapter.key)
            if self._peft is None:  # a slot is only recorded once its PeftModel exists
                raise ModelError(f"PeftEngine: adapter {adapter.key} has a slot but no PEFT model; restart the engine")
            return self._peft
        slot = next(self._slot_names)
        if adapter.factors:
            peft = self._inject_factors(adapter, slot)
        else:
            peft = self._load_path(adapter, slot)
        self._slots[adapter.key] = slot
        if len(self._slots) > self._max_loaded:
            _, oldest = self._slots.popitem(last=False)
            peft.set_adapter(slot)  # PEFT refuses to delete the active adapter
            peft.delete_adapter(oldest)
        log.info("loaded %s into PEFT slot %s", adapter.key, slot)
        return peft

    def _inject_factors(self, adapter: AdapterWeights, slot: str) -> PeftModel:
        """Add `adapter` from its verified factors: the tensors the store checked, not a second read
        of files that may have changed since."""
        ranks = {module: int(a.shape[0]) for module, (a, _) in adapter.factors.items()}
        config = LoraConfig(
            r=adapter.rank,
            lora_alpha=adapter.scale * adapter.rank,  # type: ignore[arg-type]  # PEFT types it int; any float works
            lora_dropout=0.0,
            target_modules=sorted(adapter.factors),
            rank_pattern={m: r for m, r in ranks.items() if r != adapter.rank},
            alpha_pattern={m: adapter.scale * r for m, r in ranks.items() if r != adapter.rank},
            inference_mode=True,
        )
        peft = self._peft
        if peft is None:
            peft = self._peft = get_peft_model(self._base, config, adapter_name=slot)  # type: ignore[assignment]
        else:
            peft.add_adapter(slot, config)
        layers: nn.Module = peft.base_model.model  # type: ignore[assignment]
        with torch.no_grad():
            for module, (a, b) in adapter.factors.items():
                layer: Any = layers.get_submodule(module)
                weight_a, weight_b = layer.lora_A[slot].weight, layer.lora_B[slot].weight
                weight_a.copy_(a.to(weight_a.dtype))
                weight_b.copy_(b.to(weight_b.dtype))
        peft.eval()
        return peft

    def _load_path(self, adapter: AdapterWeights, slot: str) -> PeftModel:
        path = Path(adapter.path)
        if not (path / "adapter_config.json").is_file():
            raise ModelError(
                f"adapter {adapter.key}: no factors and no adapter_config.json in {path}; "
                "AdapterWeights needs one of them"
            )
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=slot, is_trainable=False)
        else:
            self._peft.load_adapter(str(path), adapter_name=slot, is_trainable=False)
        self._peft.eval()
        return self._peft


def pick_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Greedy at temperature 0; else the built-in engine's nucleus sampling, drawn from `generator`."""
    if is_greedy(sampling):
        return int(torch.argmax(logits).item())
    return sample(logits, sampling, generator)
