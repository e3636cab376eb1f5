"""What every route needs, built once by `build_app`: engine, store, tenants, limits, metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool
from transformers import PreTrainedTokenizerBase

from loraforge.errors import ModelError, RegistryError
from loraforge.serve.adapters import AdapterRefused, AdapterStore, ServedBase
from loraforge.serve.engine import AdapterWeights, Engine
from loraforge.serve.feedback import FeedbackStore
from loraforge.serve.http.errors import ApiError, model_not_found
from loraforge.serve.http.limits import Limits, TenantSlots
from loraforge.serve.http.metrics import Metrics
from loraforge.serve.tenants import Tenant, Tenants

log = logging.getLogger("loraforge.serve.http")


@dataclass
class ServeContext:
    engine: Engine
    store: AdapterStore
    tenants: Tenants
    base: ServedBase
    tokenizer: PreTrainedTokenizerBase
    feedback: FeedbackStore | None
    limits: Limits
    metrics: Metrics
    context_length: int  # the base's, in tokens: prompt + max_tokens must fit
    stop_token_ids: tuple[int, ...]  # end of turn / end of text: a sequence ends without emitting them
    slots: TenantSlots = field(default_factory=TenantSlots)

    def max_concurrent(self, tenant: Tenant) -> int:
        return tenant.max_concurrent if tenant.max_concurrent is not None else self.limits.max_concurrent_per_tenant

    def models_for(self, tenant: Tenant) -> list[str]:
        """The `model` values this tenant may send: the base (if allowed), then its live adapters."""
        names = [self.base.model_id] if tenant.base else []
        return names + [name for name in self.store.names() if tenant.may_use(name)]

    async def resolve(self, tenant: Tenant, model: str) -> AdapterWeights | None:
        """The adapter `model` names for `tenant` (None: the base). An unknown name, a malformed one
        and one the tenant may not use all get the same 404, so names cannot be probed."""
        if model == self.base.model_id:
            if tenant.base:
                return None
            raise model_not_found(model)
        if not tenant.may_use(model.split("@", 1)[0]):
            raise model_not_found(model)
        try:
            return await run_in_threadpool(self.store.get, model)
        except RegistryError as exc:
            raise model_not_found(model) from exc
        except AdapterRefused as exc:
            log.warning("tenant %s: adapter %s refused: %s", tenant.name, model, exc.reason)
            # the reason's kind only ("signature check failed"): its details name server paths; the log has them
            raise adapter_refused(model, exc.reason.split(":", 1)[0]) from exc
        except ModelError as exc:  # an adapter that cannot be read at all is refused like a failed check
            log.warning("tenant %s: adapter %s cannot be loaded: %s", tenant.name, model, exc)
            raise adapter_refused(model, "it cannot be loaded") from exc


def adapter_refused(model: str, reason: str) -> ApiError:
    return ApiError(
        409,
        f"The model `{model}` is refused by the server's adapter checks: {reason}. "
        "It is not served (not even as the base); the operator must republish it.",
        code="adapter_refused",
        param="model",
    )
