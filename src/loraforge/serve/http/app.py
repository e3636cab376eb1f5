"""`build_app`: the FastAPI app over one engine, one adapter store and one tenants file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from transformers import PreTrainedTokenizerBase

from loraforge import __version__
from loraforge.models.base import DEFAULT_CONTEXT
from loraforge.serve.adapters import AdapterStore, ServedBase
from loraforge.serve.engine import Engine
from loraforge.serve.feedback import FeedbackStore
from loraforge.serve.http.context import ServeContext
from loraforge.serve.http.errors import install_error_handlers
from loraforge.serve.http.limits import BodyLimit, Limits
from loraforge.serve.http.metrics import Metrics, RequestCounter
from loraforge.serve.http.routes import build_router
from loraforge.serve.tenants import Tenants

DESCRIPTION = (
    "OpenAI-compatible completions over one base model and its LoRA adapters. Send "
    "`Authorization: Bearer KEY`; `model` is the base's id, an adapter NAME (its live version) or "
    "NAME@VERSION. See docs/serve.md."
)


def build_app(
    engine: Engine,
    store: AdapterStore,
    tenants: Tenants,
    base: ServedBase,
    tokenizer: PreTrainedTokenizerBase,
    *,
    feedback: FeedbackStore | None,
    limits: Limits | None = None,
    context_length: int = DEFAULT_CONTEXT,
    stop_token_ids: Sequence[int] | None = None,
) -> FastAPI:
    """The app; starting it (its lifespan) starts the engine, stopping it closes the engine.

    `context_length` is the base's (`models.context_length(model.config)`); `stop_token_ids` end
    a sequence (default: the tokenizer's eos; pass the generation config's eos ids too)."""
    limits = limits or Limits()
    if stop_token_ids is None:
        stop_token_ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    ctx = ServeContext(
        engine=engine,
        store=store,
        tenants=tenants,
        base=base,
        tokenizer=tokenizer,
        feedback=feedback,
        limits=limits,
        metrics=Metrics(engine.stats, store.stats),
        context_length=context_length,
        stop_token_ids=tuple(sorted({int(i) for i in stop_token_ids})),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.close()

    app = FastAPI(title="loraforge serve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.serve = ctx
    install_error_handlers(app)
    router = build_router(ctx)
    app.include_router(router)
    # from the router: FastAPI lists an included router in app.routes as one entry without a path
    paths = {route.path for route in router.routes if isinstance(route, APIRoute)}
    # added last = outermost: the counter also sees BodyLimit's 413s
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(RequestCounter, metrics=ctx.metrics, routes=lambda: paths)
    return app
