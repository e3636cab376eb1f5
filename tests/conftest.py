"""Shared fixtures: a tiny base on disk (built once per session) and an isolated LORAFORGE_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny import LLAMA3_STYLE_TEMPLATE, save_tiny_base

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a ChatML template (SmolLM2's markers)."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny-chatml"))


@pytest.fixture(scope="session")
def tiny_llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama with a Llama-3-style template (different markers)."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny-llama3"), chat_template=LLAMA3_STYLE_TEMPLATE)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write the user's cache, except slow tests that reuse the converted real base."""
    if os.environ.get("LORAFORGE_TEST_HOME"):
        monkeypatch.setenv("LORAFORGE_HOME", os.environ["LORAFORGE_TEST_HOME"])
        return
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path_factory.getbasetemp() / "loraforge-home"))
