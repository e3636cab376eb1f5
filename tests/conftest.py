"""Shared fixtures: a tiny base on disk (built once per session) and an isolated LORAFORGE_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny import LLAMA3_STYLE_TEMPLATE, save_tiny_base

from loraforge.models import load_tokenizer
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
