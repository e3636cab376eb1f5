"""`VllmEngine`: the `Engine` over a vLLM OpenAI server that only loraforge can reach.

loraforge authenticates, applies the tenant's ACL, verifies the adapter and renders the prompt;
vLLM gets prompt token ids on /v1/completions and answers token ids (`return_token_ids`). An
adapter reaches vLLM only after the store verified it: loraforge asks /v1/load_lora_adapter to
load the registry directory it checked, under an internal name (a hash of NAME@VERSION and the
directory) that no tenant sees or can send, since tenants only ever talk to loraforge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from loraforge.errors import ModelError
from loraforge.serve.engine import AdapterWeights, EngineStats, GenerationRequest, TokenEvent
from loraforge.serve.vllm.process import BASE_NAME, VllmProcess, VllmSettings
from loraforge.ship.export_vllm import pick_max_lora_rank

log = logging.getLogger("loraforge.serve.vllm")

REQUEST_TIMEOUT_S = 600.0  # one generation on a loaded CPU; a dead vLLM fails the connect at once
LOAD_TIMEOUT_S = 300.0


def internal_name(adapter: AdapterWeights) -> str:
    """The name vLLM knows an adapter version by: stable for a version directory, meaningless outside."""
    return "lf-" + hashlib.sha256(f"{adapter.key}\0{adapter.path}".encode()).hexdigest()[:20]


def adapter_refusal(max_lora_rank: int) -> Callable[[AdapterWeights], str | None]:
    """For `AdapterStore(accept=...)`: a rank above vLLM's --max-lora-rank is refused with a 4xx
    before vLLM is asked (vLLM would refuse the load). DoRA, bias terms and the other features
    vLLM does not load are already refused by the store's plain-LoRA check."""

    def refusal(adapter: AdapterWeights) -> str | None:
        _, problems = pick_max_lora_rank(adapter.rank, max_lora_rank)
        return "; ".join(problems) or None

    return refusal


class VllmEngine:
    """`Engine` over vLLM: starts it (or attaches to `settings.url`), loads verified adapters once
    each, keeps at most `max_loaded` of them in vLLM (unloading the least recently used idle one)."""

    name = "vllm"

    def __init__(self, settings: VllmSettings, *, max_loaded: int) -> None:
        if max_loaded < 1:
            raise ModelError(f"VllmEngine: max_loaded={max_loaded} (--max-loaded); keep at least 1 adapter loaded")
        self.settings = settings
        self.max_loaded = max_loaded
        self.process: VllmProcess | None = None
        self.url = settings.url.rstrip("/") if settings.url else ""
        self.start_seconds = 0.0
        self._client: httpx.AsyncClient | None = None
        self._loaded: OrderedDict[str, str] = OrderedDict()  # internal name -> NAME@VERSION, LRU order
        self._in_use: dict[str, int] = {}  # internal name -> sequences running on it
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._running = 0

    async def start(self) -> None:
        if self._client is not None:
            return
        api_key = self.settings.api_key
        if not self.url:
            self.process = VllmProcess(self.settings)
            self.url, api_key = self.process.url, self.process.api_key
            try:
                self.start_seconds = await asyncio.to_thread(self.process.wait_ready)
            except BaseException:
                self.process.stop()
                raise
            log.info("vLLM ready on %s after %.1f s", self.url, self.start_seconds)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        if self.process is None:
            await self._check_attached()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
            self.process = None
            self.url = ""  # a later start() starts a fresh vLLM, on a new port

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, waiting=0, loaded_adapters=len(self._loaded))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        client = self._started()
        model = BASE_NAME if request.adapter is None else await self._ensure_loaded(client, request.adapter)
        self._running += 1
        self._in_use[model] = self._in_use.get(model, 0) + 1
        try:
            # leaving this block early (the caller closed the iterator) closes the connection,
            # and vLLM aborts a request whose client went away
            async with client.stream("POST", "/v1/completions", json=completion_body(request, model)) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise ModelError(f"vLLM /v1/completions answered {response.status_code}: {response.text[:300]}")
                async for event in token_events(response.aiter_lines(), request.sampling.stop_token_ids):
                    yield event
        finally:
            self._running -= 1
            self._in_use[model] -= 1

    def _started(self) -> httpx.AsyncClient:
        if self._client is None:
            raise ModelError("VllmEngine.generate: the engine is not started; await engine.start() first")
        return self._client

    async def _check_attached(self) -> None:
        """An attached vLLM must be up, serve the base as BASE_NAME and load adapters at runtime."""
        client = self._started()
        try:
            models = (await client.get("/v1/models", timeout=10)).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ModelError(f"--engine-url {self.url}: no vLLM answers /v1/models there ({exc})") from exc
        ids = [m.get("id") for m in models.get("data", [])] if isinstance(models, dict) else []
        if BASE_NAME not in ids:
            raise ModelError(
                f"--engine-url {self.url}: vLLM serves {ids or 'nothing'}, not {BASE_NAME!r}; start it with "
                f"--served-model-name {BASE_NAME} --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )

    async def _ensure_loaded(self, client: httpx.AsyncClient, adapter: AdapterWeights) -> str:
        name = internal_name(adapter)
        lock = self._load_locks.setdefault(name, asyncio.Lock())
        async with lock:  # two requests for one cold adapter load it once
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return name
            started = time.perf_counter()
            body = {"lora_name": name, "lora_path": adapter.path}
            response = await client.post("/v1/load_lora_adapter", json=body, timeout=LOAD_TIMEOUT_S)
            if response.status_code != 200 and "already" not in response.text:
                raise ModelError(
                    f"vLLM refused to load adapter {adapter.key} ({response.status_code}): {response.text[:300]}; "
                    "is it started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?"
                )
            self._loaded[name] = adapter.key
            log.info("vLLM loaded adapter %s as %s in %.3f s", adapter.key, name, time.perf_counter() - started)
        await self._evict(client)
        return name

    async def _evict(self, client: httpx.AsyncClient) -> None:
        """Unload least recently used adapters past max_loaded; one still generating stays."""
        idle = [n for n in self._loaded if not self._in_use.get(n)]
        for name in idle[: max(0, len(self._loaded) - self.max_loaded)]:
            key = self._loaded.pop(name)
            self._load_locks.pop(name, None)
            with contextlib.suppress(httpx.HTTPError):
                await client.post("/v1/unload_lora_adapter", json={"lora_name": name}, timeout=LOAD_TIMEOUT_S)
            log.info("vLLM unloaded adapter %s (%s): max_loaded=%d", key, name, self.max_loaded)


def completion_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """vLLM's /v1/completions body for `request`: token ids in, token ids out, streamed."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(request.prompt_ids),
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stream": True,
        "return_token_ids": True,
        # loraforge decides where a sequence ends (its stop ids hold the base's eos): an empty
        # stop_token_ids means fixed length, as on the other engines, not "stop at vLLM's eos"
        "stop_token_ids": list(sampling.stop_token_ids),
        "ignore_eos": True,
        "skip_special_tokens": False,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    return body


async def token_events(lines: AsyncIterator[str], stop_token_ids: tuple[int, ...]) -> AsyncIterator[TokenEvent]:
    """TokenEvents from vLLM's SSE lines; a stop token ends the sequence without being emitted."""
    async for line in lines:
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ").strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise ModelError(f"vLLM failed while generating: {chunk['error']}")
        for choice in chunk.get("choices", []):
            for token in choice.get("token_ids") or []:
                if int(token) in stop_token_ids:
                    yield TokenEvent(None, "stop")
                    return
                yield TokenEvent(int(token))
            finish = choice.get("finish_reason")
            if finish is not None:
                yield TokenEvent(None, "length" if finish == "length" else "stop")
                return
    yield TokenEvent(None, "abort")  # the stream ended without a finish reason: vLLM went away
