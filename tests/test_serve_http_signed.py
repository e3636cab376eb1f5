"""With a public key (`loraforge serve --pub`), an adapter whose files changed after signing is
refused over HTTP with the reason code `adapter_refused`, the reason in the server log, and is
never answered as the base; its untouched signed sibling is served."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file, save_file
from serve_http_support import Served, TenantSpec, publish_live, serving, start_served
from ship_adapters import make_adapter

from loraforge.ship.registry import Registry
from loraforge.ship.signing import generate_keypair, sign_adapter

HELLO = [{"role": "user", "content": "hello"}]


def tamper_weights(adapter_dir: Path) -> None:
    """Scale every LoRA B in the stored copy: still a valid adapter, only the signature can tell."""
    weights = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v * 3 if "lora_B" in k else v for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def served(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("serve-signed")
    private_key, public_key = generate_keypair(work / "keys")
    registry = Registry(work / "registry")
    for name in ("honest", "tampered"):
        adapter = make_adapter(tiny_base_dir, work / name, r=4, b_std=0.1)
        sign_adapter(adapter, private_key)
        publish_live(registry, adapter, name)
    stored = registry.resolve("tampered")
    stored.chmod(0o755)
    (stored / "adapter_model.safetensors").chmod(0o644)
    tamper_weights(stored)
    tenants = {"acme": TenantSpec(["honest", "tampered"])}
    yield from serving(start_served(tiny_base_dir, registry, tenants, work, public_key=public_key))


def test_signed_adapter_is_served(served: Served) -> None:
    answer = served.client("acme").chat.completions.create(model="honest", messages=HELLO, max_tokens=4)  # type: ignore[arg-type]
    assert answer.model == "honest@1"


def test_tampered_adapter_is_refused_with_its_reason_code(served: Served) -> None:
    response = served.post("/v1/chat/completions", "acme", {"model": "tampered", "messages": HELLO, "max_tokens": 4})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "adapter_refused"
    assert "signature" in error["message"]


def test_tampered_adapter_refusal_reason_is_logged(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="loraforge"):
        with pytest.raises(openai.ConflictError):
            served.client("acme").chat.completions.create(model="tampered", messages=HELLO, max_tokens=4)  # type: ignore[arg-type]
    logged = "\n".join(r.getMessage() for r in caplog.records if "tampered" in r.getMessage())
    assert "signature" in logged
    assert "adapter_model.safetensors" in logged  # the file that changed, for the operator


def test_tampered_adapter_is_refused_again_not_served_as_base(served: Served) -> None:
    for _ in range(2):
        response = served.post("/v1/completions", "acme", {"model": "tampered", "prompt": "hi", "max_tokens": 2})
        assert response.status_code == 409
