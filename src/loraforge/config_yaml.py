"""Config text in: a YAML file read into a mapping, and `--set key.path=value` overrides applied to it.

Kept apart from `loraforge.config` (the typed settings), which validates what these return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loraforge.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (['train', 'lr'], 1e-4); the value is read as YAML, then typed by the field."""
    if "=" not in text:
        raise ConfigError(
            [f"--set {text!r} (an overrides entry): expected key.path=value, e.g. --set train.lr=1e-4"], "--set"
        )
    key, _, value = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(
            [f"--set {text!r} (an overrides entry): no key before '='; e.g. --set train.lr=1e-4"], "--set"
        )
    return path, yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    merged = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}; create one with `loraforge init {path}`"], str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"invalid YAML{where}: {getattr(exc, 'problem', exc)}"], str(path)) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping of keys (base:, data:, lora:, ...)"], str(path))
    return raw
