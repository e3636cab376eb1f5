"""A real `loraforge serve` app for the HTTP tests: the tiny base, a registry with real adapters,
a tenants file with real keys, and uvicorn on a free loopback port in a background thread."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml
from ship_adapters import make_adapter

from loraforge.models import context_length, load_base
from loraforge.serve.adapters import AdapterStore, ServedBase
from loraforge.serve.background import BackgroundServer
from loraforge.serve.feedback import FeedbackStore
from loraforge.serve.http import Limits, build_app
from loraforge.serve.server import EngineKind, make_engine, stop_token_ids
from loraforge.serve.tenants import Tenants, add_tenant
from loraforge.serve.vllm import VllmSettings, adapter_refusal
from loraforge.ship.registry import Registry


def publish_live(registry: Registry, adapter_dir: Path, name: str) -> int:
    """Publish `adapter_dir` as NAME's next version and make it live; the version number."""
    entry = registry.publish(adapter_dir, name, force=True)  # test adapters carry no gate verdict
    registry.promote(name, entry.version)
    return entry.version


@dataclass
class TenantSpec:
    adapters: list[str]
    base: bool = True
    max_concurrent: int | None = None


def write_tenants(path: Path, specs: dict[str, TenantSpec]) -> dict[str, str]:
    """tenants.yaml for `specs` through add_tenant; the clear key of each tenant."""
    keys = {name: add_tenant(path, name, spec.adapters, base=spec.base) for name, spec in specs.items()}
    document = yaml.safe_load(path.read_text())
    for name, spec in specs.items():
        if spec.max_concurrent is not None:
            document["tenants"][name]["max_concurrent"] = spec.max_concurrent
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return keys


@dataclass
class Served:
    """A running server and what a test needs to call and inspect it."""

    live: BackgroundServer
    keys: dict[str, str]
    model_id: str
    feedback_path: Path
    feedback: FeedbackStore
    registry: Registry
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.live.url

    def client(self, tenant: str) -> openai.OpenAI:
        # max_retries=0: the client retries 429s and 5xx by default, hiding what the server said
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.keys[tenant], max_retries=0, timeout=120)

    def post(self, path: str, tenant: str | None, payload: Any) -> httpx.Response:
        headers = {} if tenant is None else {"Authorization": f"Bearer {self.keys[tenant]}"}
        return httpx.post(f"{self.url}{path}", json=payload, headers=headers, timeout=120)

    def get(self, path: str, tenant: str | None = None) -> httpx.Response:
        headers = {} if tenant is None else {"Authorization": f"Bearer {self.keys[tenant]}"}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=120)


def start_served(
    base_dir: Path,
    registry: Registry,
    tenants: dict[str, TenantSpec],
    work: Path,
    *,
    limits: Limits | None = None,
    public_key: Path | None = None,
    engine: EngineKind = "builtin",
    vllm: VllmSettings | None = None,
) -> Served:
    """The app `loraforge serve` builds (the engine `--engine` names; vllm: its settings), served on a free port."""
    loaded = load_base(str(base_dir))
    served_base = ServedBase.from_loaded(loaded)
    accept = adapter_refusal(vllm.max_lora_rank) if vllm is not None else None
    store = AdapterStore(registry, served_base, public_key=public_key, max_loaded=4, accept=accept)
    keys = write_tenants(work / "tenants.yaml", tenants)
    feedback_path = work / "feedback.sqlite3"
    feedback = FeedbackStore(feedback_path)
    engine_instance = make_engine(engine, loaded.model, 4, loaded.dtype, vllm=vllm)
    app = build_app(
        engine_instance, store, Tenants.load(work / "tenants.yaml"), served_base,
        loaded.tokenizer, feedback=feedback, limits=limits or Limits(),
        context_length=context_length(loaded.model.config),
        stop_token_ids=stop_token_ids(loaded.model, loaded.tokenizer),
    )  # fmt: skip
    # the lifespan starts the engine: vLLM's start on a loaded 2-core machine takes minutes
    live = BackgroundServer(app, start_timeout_s=900 if engine == "vllm" else 60)
    return Served(live, keys, served_base.model_id, feedback_path, feedback, registry, {"engine": engine_instance})


HELLO = [{"role": "user", "content": "hello, where is my order?"}]
BODY_LIMIT = 20_000
CHECKS_LIMITS = Limits(max_body_bytes=BODY_LIMIT, max_tokens_cap=400)


def client_checks_registry(base_dir: Path, work: Path) -> tuple[Registry, dict[str, TenantSpec]]:
    """What tests/test_serve_http.py's client checks expect: three real PEFT adapters (B non-zero, so
    each changes the output) and tenants acme (alpha + base), globex (beta, no base), solo (alpha, one
    request at a time), initech (alpha, beta and the base); nobody's adapter gamma."""
    registry = Registry(work / "registry")
    publish_live(registry, make_adapter(base_dir, work / "alpha", r=4, b_std=0.1), "alpha")
    publish_live(registry, make_adapter(base_dir, work / "beta", r=8, b_std=0.3, seed=1), "beta")
    publish_live(registry, make_adapter(base_dir, work / "gamma", r=2, b_std=0.2, seed=2), "gamma")
    tenants = {
        "acme": TenantSpec(["alpha"]),
        "globex": TenantSpec(["beta"], base=False),
        "solo": TenantSpec(["alpha"], max_concurrent=1),
        "initech": TenantSpec(["alpha", "beta"]),
    }
    return registry, tenants


def serving(served: Served) -> Iterator[Served]:
    """For a fixture: yield the server, stop it after."""
    try:
        yield served
    finally:
        served.live.stop()
        served.feedback.close()
