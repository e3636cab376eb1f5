"""What one request may ask for, and how many a tenant may have in flight.

Every limit answers with a 4xx that names the limit and its value, never a 5xx: a client that
sends too much learns what to change.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraforge.serve.http.errors import ApiError, error_body


@dataclass(frozen=True)
class Limits:
    """Per-request and per-tenant limits; `loraforge serve` uses these defaults."""

    max_body_bytes: int = 1_000_000  # a chat of ~250k tokens is past any context this serves
    max_prompt_tokens: int | None = None  # None: the base's context length alone caps the prompt
    max_tokens_cap: int = 2048  # the most max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request names none (bounded by what the context leaves)
    max_concurrent_per_tenant: int = 4  # a tenant's requests in flight, unless tenants.yaml says otherwise


class TenantSlots:
    """Requests in flight per tenant. The app runs on one event loop, so a dict is enough."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, tenant: str, limit: int) -> Iterator[None]:
        """One slot of `tenant`'s `limit` for the block; 429 when they are all taken."""
        running = self.in_flight.get(tenant, 0)
        if running >= limit:
            raise ApiError(
                429,
                f"Too many concurrent requests: this API key has {running} in flight, its limit is {limit}; "
                "retry when one finishes, or ask the operator to raise max_concurrent in tenants.yaml.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self.in_flight[tenant] = running + 1
        try:
            yield
        finally:
            self.in_flight[tenant] -= 1
            if not self.in_flight[tenant]:
                del self.in_flight[tenant]


class BodyLimit:
    """ASGI middleware: read a request body up to `max_bytes` before any route sees it, answer 413
    past that (a declared Content-Length is refused before reading), and replay the body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: a disconnect, for streaming responses
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        message = f"Request body over the server's limit of {self.max_bytes} bytes; send a shorter prompt."
        payload = json.dumps(error_body(message, code="request_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
