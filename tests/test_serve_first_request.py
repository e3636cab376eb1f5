"""`answer_one`, the demo's serve step: a real server on loopback, the openai client, and a refusal
that comes back as one clear error with the server's reason, not a client traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from serve_http_support import publish_live
from ship_adapters import make_adapter

from loraforge.errors import LoraforgeError
from loraforge.models import MANIFEST_NAME
from loraforge.serve.first_request import answer_one
from loraforge.serve.server import ServeOptions
from loraforge.ship.registry import Registry

PROMPT = [{"role": "user", "content": "hello"}]


def _options(tiny_base_dir: Path, work: Path, registry: Registry) -> ServeOptions:
    return ServeOptions(
        registry=registry.root, base=str(tiny_base_dir), tenants=work / "serve" / "tenants.yaml",
        state_dir=work / "serve", dtype="fp32",
    )  # fmt: skip


def test_the_adapter_answers_and_a_second_call_re_keys_the_tenant(tiny_base_dir: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = publish_live(registry, make_adapter(tiny_base_dir, tmp_path / "alpha", r=4, b_std=0.1), "alpha")
    options = _options(tiny_base_dir, tmp_path, registry)

    first = answer_one(options, "alpha", PROMPT, max_tokens=6)
    key_hash = yaml.safe_load(options.tenants.read_text())["tenants"]["demo"]["api_key_sha256"]
    again = answer_one(options, "alpha", PROMPT, max_tokens=6)

    assert first.model == again.model == f"alpha@{version}"
    assert first.completion_tokens == 6 and first.finish_reason == "length"
    assert again.answer == first.answer  # greedy
    tenants = yaml.safe_load(options.tenants.read_text())["tenants"]
    assert tenants["demo"]["adapters"] == ["alpha"]
    assert tenants["demo"]["api_key_sha256"] != key_hash  # a fresh key each run, never stored in clear


def test_a_refused_adapter_is_one_error_with_the_reason(tiny_base_dir: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    wrong = make_adapter(tiny_base_dir, tmp_path / "wrong", r=4, b_std=0.1)
    manifest = json.loads((wrong / MANIFEST_NAME).read_text())
    manifest["base"]["fingerprint"] = "sha256:" + "f" * 64  # as if trained on another base
    (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
    publish_live(registry, wrong, "wrong")

    with pytest.raises(LoraforgeError, match=r"refused the request for 'wrong' \(409\).*base"):
        answer_one(_options(tiny_base_dir, tmp_path, registry), "wrong", PROMPT, max_tokens=4)
