"""Prometheus metrics, one `CollectorRegistry` per app (two apps in one process never mix counts).

Request counters carry the route template and status only: no tenant, key or adapter names, so
a scrape tells nobody which adapters exist. Engine and adapter-store figures are read from
`engine.stats()` and `store.stats()` at scrape time rather than copied on every change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraforge.serve.adapters import StoreStats
from loraforge.serve.engine import EngineStats

PREFIX = "loraforge"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's counters and histograms, and `render()` for GET /metrics."""

    def __init__(self, engine_stats: Callable[[], EngineStats], store_stats: Callable[[], StoreStats]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests answered, by route template and status", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of served requests", registry=self.registry
        )
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "Tokens generated for served requests", registry=self.registry
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "From the request's arrival to its first generated token",
            buckets=TTFT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.tpot = Histogram(
            f"{PREFIX}_time_per_output_token_seconds", "Mean time between generated tokens, per request",
            buckets=TPOT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_LiveStats(engine_stats, store_stats))

    def observe_generation(self, started: float, first_token: float | None, ended: float, tokens: int) -> None:
        if first_token is not None:
            self.ttft.observe(first_token - started)
            if tokens > 1:
                self.tpot.observe((ended - first_token) / (tokens - 1))
        self.completion_tokens.inc(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveStats(Collector):
    """Engine queue and adapter-cache figures, read when Prometheus scrapes."""

    def __init__(self, engine_stats: Callable[[], EngineStats], store_stats: Callable[[], StoreStats]) -> None:
        self.engine_stats, self.store_stats = engine_stats, store_stats

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families are built fresh at every collect

    def collect(self) -> Iterable[Metric]:
        engine, store = self.engine_stats(), self.store_stats()
        yield GaugeMetricFamily(f"{PREFIX}_engine_running", "Sequences the engine is generating", engine.running)
        yield GaugeMetricFamily(f"{PREFIX}_engine_waiting", "Sequences queued in the engine", engine.waiting)
        yield GaugeMetricFamily(
            f"{PREFIX}_engine_loaded_adapters", "Adapters the engine holds in its own layout", engine.loaded_adapters
        )
        yield GaugeMetricFamily(f"{PREFIX}_adapters_loaded", "Verified adapters the store holds", store.loaded)
        yield CounterMetricFamily(f"{PREFIX}_adapter_cache_hits", "Adapter lookups served from memory", store.hits)
        yield CounterMetricFamily(
            f"{PREFIX}_adapter_cache_misses", "Adapter lookups that loaded from disk", store.misses
        )
        yield CounterMetricFamily(
            f"{PREFIX}_adapter_refusals", "Adapters refused by a check (fingerprint, signature, shapes)", store.refused
        )
        yield _histogram(f"{PREFIX}_adapter_load_seconds", "Time to load and verify one adapter", store.load_seconds)


def _histogram(name: str, documentation: str, values: Sequence[float]) -> HistogramMetricFamily:
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in LOAD_BUCKETS]
    buckets.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=float(sum(values)))


class RequestCounter:
    """ASGI middleware counting every answer by route template (`/v1/models`, never a raw path)
    and status, 413s from BodyLimit and 404s for unknown paths included."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], set[str]]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before the response started

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route=self._route(scope), status=str(status)).inc()

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None) or scope.get("path", "")
        return path if path in self.routes() else "other"


def now() -> float:
    return time.perf_counter()
