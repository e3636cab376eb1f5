"""schemathesis over the live server's /openapi.json: valid and invalid requests to every
operation, bounded to 50 examples per operation and mode, never get a 5xx, and every error
comes in OpenAI's shape. Half the bodies that name a model get one the tenant may use, so the
generation path (templates, limits, stop strings, sampling) is fuzzed too, not only the 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from serve_http_support import Served, TenantSpec, publish_live, serving, start_served
from ship_adapters import make_adapter

from loraforge.serve.http import Limits
from loraforge.ship.registry import Registry

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def served(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("serve-fuzz")
    registry = Registry(work / "registry")
    publish_live(registry, make_adapter(tiny_base_dir, work / "alpha", r=4), "alpha")
    # small generations keep 700 requests to seconds on a shared CPU; the limits are what is fuzzed
    limits = Limits(max_body_bytes=50_000, max_tokens_cap=8, default_max_tokens=4)
    yield from serving(start_served(tiny_base_dir, registry, {"fuzz": TenantSpec(["alpha"])}, work, limits=limits))


def _usable_model(body: object, served: Served) -> object:
    """Every other body that names a model gets a real one (deterministic per body)."""
    if isinstance(body, dict) and "model" in body and len(repr(body)) % 2 == 0:
        return {**body, "model": "alpha" if len(repr(body)) % 4 == 0 else served.model_id}
    return body


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_request_gets_a_server_error(served: Served, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    headers = {"Authorization": f"Bearer {served.keys['fuzz']}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/feedback"}
    if mode == GenerationMode.NEGATIVE:  # an operation without inputs has no invalid request to make
        operations = [op for op in operations if len(op.body) or len(op.path_parameters) or len(op.query)]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def call(case: schemathesis.Case) -> None:
            case.body = _usable_model(case.body, served)
            response = case.call(base_url=served.url, headers=headers)
            problem = None
            if response.status_code >= 500:
                problem = "server error"
            elif response.status_code >= 400 and not isinstance(_error_message(response), str):
                problem = "error not in OpenAI's shape"
            if problem:
                failures.append(f"{case.method} {case.path} {response.status_code} {problem}: {response.text[:300]}")

        call()
    assert failures == []


def _error_message(response: schemathesis.Response) -> object:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
