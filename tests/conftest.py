"""Shared fixtures: a tiny base on disk (built once per session), an isolated LORAFORGE_HOME, and a
saved tiny adapter (a fresh copy per test) for the ship tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from manifests import valid_manifest
from tiny import LLAMA3_STYLE_TEMPLATE, save_tiny_base

from loraforge.config import LoraSpec
from loraforge.models import attach_lora, load_base, load_tokenizer, save_adapter
from loraforge.models.fingerprint import base_fingerprint
from loraforge.pipeline.replay import cached_replay_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a ChatML template (SmolLM2's markers)."""
    return _with_builtin_replay(save_tiny_base(tmp_path_factory.mktemp("tiny-chatml")), tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama with a Llama-3-style template (different markers)."""
    base = save_tiny_base(tmp_path_factory.mktemp("tiny-llama3"), chat_template=LLAMA3_STYLE_TEMPLATE)
    return _with_builtin_replay(base, tmp_path_factory)


def _test_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(os.environ.get("LORAFORGE_TEST_HOME") or tmp_path_factory.getbasetemp() / "loraforge-home")


def _with_builtin_replay(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed data.replay=builtin's cache with what distilling gives for a tiny random base: no rows.
    It never ends a turn within the distill budget, so every prompt is dropped (test_distill checks
    that); answering all 151 built-in prompts to find out costs minutes of CPU per test session.
    tests/test_replay_builtin.py runs the real distill path on a base without a seeded cache."""
    home = _test_home(tmp_path_factory)
    tokenizer = load_tokenizer(str(model_dir))
    fingerprint = base_fingerprint(model_dir, tokenizer.chat_template, home / "fingerprints")
    path = cached_replay_path(fingerprint, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return model_dir


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write the user's cache, except slow tests that reuse the converted real base."""
    monkeypatch.setenv("LORAFORGE_HOME", str(_test_home(tmp_path_factory)))


@pytest.fixture(scope="module")
def built_adapter(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT adapter on the tiny base, with a manifest and a README (the registry's model card)."""
    base = load_base(str(tiny_base_dir))
    adapter_dir = tmp_path_factory.mktemp("built") / "adapter"
    save_adapter(attach_lora(base.model, LoraSpec(r=2)), adapter_dir, valid_manifest(base.fingerprint))
    (adapter_dir / "README.md").write_text("# adapter\n\nA LoRA adapter on the tiny base.\n")
    return adapter_dir


@pytest.fixture
def adapter(built_adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_adapter, tmp_path / "adapter"))
