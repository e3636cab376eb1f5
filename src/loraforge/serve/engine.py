"""The one interface the HTTP layer knows an engine by, and the types that cross it.

The HTTP layer authenticates, checks the tenant's ACL, resolves and verifies the adapter
(`serve.adapters`), renders the prompt with the adapter's own chat template and tokenizes it;
an engine only turns prompt token ids into token ids. So the built-in engine, the PEFT baseline
and the vLLM gateway are interchangeable and tested by the same client checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. temperature 0 is greedy; `seed` makes sampling reproducible per request."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # end the sequence (finish "stop") without emitting the token


@dataclass(frozen=True)
class AdapterWeights:
    """A verified adapter, ready for an engine: its LoRA factors by module name, in fp32.

    `factors[module] = (A, B)` with A of shape (r, in_features) and B of shape (out_features, r),
    module names as in the base model (`model.layers.0.self_attn.q_proj`); the update a module
    adds is `scale * x @ A.T @ B.T`. `key` is unique per adapter version (`name@version`).
    """

    key: str
    name: str
    version: int
    rank: int
    scale: float  # lora_alpha / r, or lora_alpha / sqrt(r) for rsLoRA
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    chat_template: str | None
    path: str  # the registry directory it was read from (for logs)
    load_seconds: float = 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate. `adapter` is None for the base."""

    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: Sampling
    adapter: AdapterWeights | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, or the end of the sequence (`token_id` None, `finish_reason` set)."""

    token_id: int | None
    finish_reason: FinishReason | None = None


@dataclass
class EngineStats:
    """What /metrics reports from the engine."""

    running: int = 0  # sequences in the running batch
    waiting: int = 0  # sequences queued behind it
    loaded_adapters: int = 0  # adapters the engine holds in its own layout (slots)


class Engine(Protocol):
    """Generates tokens for requests; may batch many requests and adapters together.

    `generate` yields the request's tokens as they are made and ends with one event whose
    `finish_reason` is set. Closing the iterator early (a client that went away, a stop string
    the HTTP layer found) aborts the sequence and frees its place in the batch.
    """

    name: str  # "builtin", "peft", "vllm"

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]: ...

    def stats(self) -> EngineStats: ...


async def relay(events: asyncio.Queue[TokenEvent | BaseException]) -> AsyncIterator[TokenEvent]:
    """What an engine's worker put on a sequence's queue, up to and with its finishing event; an
    exception the worker put there is raised in the caller's task."""
    while True:
        item = await events.get()
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.finish_reason is not None:
            return
