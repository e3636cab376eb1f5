"""The routes: completions (chat and plain), models, feedback, health and metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from loraforge.serve.engine import AdapterWeights, GenerationRequest, Sampling
from loraforge.serve.feedback import FeedbackError, FeedbackInvalid
from loraforge.serve.http.context import ServeContext
from loraforge.serve.http.errors import ApiError, model_not_found, unauthorized
from loraforge.serve.http.generation import HeldStream, Kind, Run, chat_body, completion_id, sse_events, text_body
from loraforge.serve.http.metrics import now
from loraforge.serve.http.prompts import chat_prompt, completion_prompt, token_budget
from loraforge.serve.http.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from loraforge.serve.http.text import TextStream
from loraforge.serve.tenants import Tenant

log = logging.getLogger("loraforge.serve.http")

Render = Callable[[AdapterWeights | None], tuple[list[int], Any]]  # adapter -> (prompt ids, prompt as recorded)


def build_router(ctx: ServeContext) -> APIRouter:
    router = APIRouter()
    bearer = HTTPBearer(auto_error=False)  # auto_error would answer 403 in FastAPI's shape

    async def tenant_of(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Tenant:
        tenant = ctx.tenants.authenticate(credentials.credentials if credentials is not None else None)
        if tenant is None:
            raise unauthorized()
        return tenant

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, tenant: Tenant = Depends(tenant_of)) -> Response:
        if body.logprobs:
            raise ApiError(400, "logprobs are not served by this server; leave `logprobs` out.", param="logprobs")
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await complete(ctx, tenant, body, "chat", requested, lambda adapter: chat_prompt(ctx, body, adapter))

    @router.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, tenant: Tenant = Depends(tenant_of)) -> Response:
        if body.logprobs or body.echo:
            raise ApiError(400, "logprobs and echo are not served by this server; leave them out.", param="logprobs")
        return await complete(ctx, tenant, body, "text", body.max_tokens, lambda _: completion_prompt(ctx, body))

    @router.get("/v1/models")
    async def list_models(tenant: Tenant = Depends(tenant_of)) -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name) for name in ctx.models_for(tenant)]}

    @router.get("/v1/models/{model:path}")
    async def retrieve_model(model: str, tenant: Tenant = Depends(tenant_of)) -> dict[str, Any]:
        if model not in ctx.models_for(tenant):
            raise model_not_found(model)
        return _model_card(model)

    @router.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, tenant: Tenant = Depends(tenant_of)) -> dict[str, Any]:
        if ctx.feedback is None:
            raise ApiError(404, "Feedback is not kept by this server; the operator starts it with --state-dir.")
        try:
            await run_in_threadpool(ctx.feedback.add_feedback, body.id, tenant.name, body.rating, body.edited)
        except FeedbackError as exc:
            raise ApiError(404, str(exc), code="completion_not_found", param="id") from exc
        except FeedbackInvalid as exc:
            raise ApiError(400, str(exc), param="edited") from exc
        return {"id": body.id, "object": "feedback", "rating": body.rating, "recorded": True}

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/metrics", response_class=Response)
    async def metrics(tenant: Tenant = Depends(tenant_of)) -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def _model_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "loraforge"}


async def complete(
    ctx: ServeContext,
    tenant: Tenant,
    body: ChatCompletionRequest | CompletionRequest,
    kind: Kind,
    requested: int | None,
    render: Render,
) -> Response:
    """Hold a concurrency slot, resolve the model, render, check limits, generate, answer."""
    if body.n not in (None, 1):
        raise ApiError(400, f"n={body.n}: this server returns one choice per request; send n=1.", param="n")
    started = now()
    with contextlib.ExitStack() as slot:
        slot.enter_context(ctx.slots.hold(tenant.name, ctx.max_concurrent(tenant)))
        adapter = await ctx.resolve(tenant, body.model)
        prompt_ids, recorded_prompt = render(adapter)
        sampling = Sampling(
            max_tokens=token_budget(ctx, len(prompt_ids), requested),
            temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's default
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop_token_ids=ctx.stop_token_ids,
        )
        cid = completion_id(kind)
        request = GenerationRequest(cid, tuple(prompt_ids), sampling, adapter)
        run = Run(ctx, request, TextStream(ctx.tokenizer, body.stop_strings()), started)
        model = adapter.key if adapter is not None else ctx.base.model_id

        async def record() -> None:
            await record_completion(ctx, cid, tenant, model, recorded_prompt, run.text.text)

        if body.stream:
            events = sse_events(kind, cid, model, run, body.include_usage(), record)
            return HeldStream(events, release=slot.pop_all().close)
        async for _ in run.deltas():
            pass
        await record()
        return JSONResponse((chat_body if kind == "chat" else text_body)(cid, model, run))


async def record_completion(ctx: ServeContext, cid: str, tenant: Tenant, model: str, prompt: Any, answer: str) -> None:
    """Keep the completion for feedback; a store that fails is logged, and the answer still goes out."""
    if ctx.feedback is None:
        return
    try:
        await run_in_threadpool(ctx.feedback.record_completion, cid, tenant.name, model, prompt, answer)
    except Exception:
        log.exception("completion %s: could not record it for feedback", cid)
