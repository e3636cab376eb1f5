"""One generation from the engine's token events to OpenAI's answer: whole, or as SSE chunks.

A `Run` asks the engine only once it is iterated, and always closes the engine's iterator, so a
stop string, a client that went away or an error frees the sequence's place in the engine.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from loraforge.serve.engine import GenerationRequest
from loraforge.serve.http.context import ServeContext
from loraforge.serve.http.errors import error_body
from loraforge.serve.http.metrics import now
from loraforge.serve.http.text import TextStream

log = logging.getLogger("loraforge.serve.http")

Kind = Literal["chat", "text"]


def completion_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


@dataclass
class Run:
    ctx: ServeContext
    request: GenerationRequest
    text: TextStream
    started: float  # when the request arrived (perf_counter), for time to first token
    finish_reason: str = "length"
    completion_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    async def deltas(self) -> AsyncIterator[str]:
        """The answer's text as it becomes final; `finish_reason` and the counts are set at the end."""
        self.ctx.metrics.prompt_tokens.inc(self.prompt_tokens)
        events = self.ctx.engine.generate(self.request)
        first: float | None = None
        try:
            async for event in events:
                if event.token_id is None:
                    # "abort" only reaches here when the engine shut down under the sequence
                    self.finish_reason = "stop" if event.finish_reason == "abort" else str(event.finish_reason)
                    if tail := self.text.finish():
                        yield tail
                    break
                self.completion_tokens += 1
                first = first if first is not None else now()
                if piece := self.text.push(event.token_id):
                    yield piece
                if self.text.stopped:
                    self.finish_reason = "stop"
                    break
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()  # aborts the engine's sequence when it has not ended by itself
            self.ctx.metrics.observe_generation(self.started, first, now(), self.completion_tokens)


def chat_body(cid: str, model: str, run: Run) -> dict[str, Any]:
    message = {"role": "assistant", "content": run.text.text}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": run.finish_reason}
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [choice], "usage": run.usage(),
    }  # fmt: skip


def text_body(cid: str, model: str, run: Run) -> dict[str, Any]:
    choice = {"index": 0, "text": run.text.text, "logprobs": None, "finish_reason": run.finish_reason}
    return {
        "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [choice], "usage": run.usage(),
    }  # fmt: skip


def _chunk(kind: Kind, cid: str, model: str, created: int, piece: str | None, finish: str | None) -> dict[str, Any]:
    if kind == "chat":
        delta = {} if piece is None else {"content": piece}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]}


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def sse_events(
    kind: Kind, cid: str, model: str, run: Run, include_usage: bool, on_done: Callable[[], Any]
) -> AsyncIterator[str]:
    """`data: {...}` chunks: the role (chat), text deltas, the finish reason, the usage chunk when
    asked (`stream_options.include_usage`, with empty choices as OpenAI sends it), `[DONE]`."""
    created = int(time.time())
    if kind == "chat":
        first = _chunk(kind, cid, model, created, None, None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        yield _sse(first)
    try:
        async for piece in run.deltas():
            yield _sse(_chunk(kind, cid, model, created, piece, None))
    except Exception:  # headers are sent: the error can only travel as an event the clients raise on
        log.exception("completion %s failed while streaming", cid)
        yield _sse(error_body("The engine failed while generating; the server log has the details.", "server_error"))
        return
    yield _sse(_chunk(kind, cid, model, created, None, run.finish_reason))
    if include_usage:
        yield _sse({"id": cid, "object": _chunk(kind, cid, model, created, None, None)["object"],
                    "created": created, "model": model, "choices": [], "usage": run.usage()})  # fmt: skip
    await on_done()
    yield _sse("[DONE]")


class HeldStream(StreamingResponse):
    """An SSE response that runs `release` once it is over, however it ended (finished, client
    gone, error): the tenant's concurrency slot is held exactly as long as the stream."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()
