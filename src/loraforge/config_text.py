"""The config as text: the YAML that `loraforge init` and `config check` write, each key with its
reason as a comment, and the markdown reference behind docs/config.md. Both are generated from the
fields in `loraforge.config`, so a reason lives in exactly one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from loraforge.config import Config, DataSpec, EvalSpec, LoraSpec, ShipSpec, TrainSpec


def to_plain(config: BaseModel) -> dict[str, Any]:
    """JSON/YAML-ready dict of a config (paths as strings)."""
    return config.model_dump(mode="json")


def render_yaml(config: Config) -> str:
    """The resolved config as YAML, each key commented with the reason for its default."""
    lines = [
        "# loraforge config: every key shown with its value; comments give the reason for each default.",
        "# Paths are relative to the directory you run loraforge from.",
    ]
    _render_section(config, 0, lines)
    return "\n".join(lines) + "\n"


def _render_section(section: BaseModel, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            _render_section(value, depth + 1, lines)
            continue
        dumped = yaml.safe_dump(to_plain_value(value), default_flow_style=True, width=1000).strip()
        dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
        comment = f"  # {field.description}" if field.description else ""
        lines.append(f"{indent}{name}: {dumped}{comment}")


def to_plain_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [to_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain_value(v) for k, v in value.items()}
    return value


def reference_markdown() -> str:
    """docs/config.md, generated from the fields (CI checks it is current)."""
    out = [
        "# Config reference",
        "",
        "Generated from `src/loraforge/config.py` by `loraforge config docs`; do not edit by hand.",
        "",
    ]
    sections: list[tuple[str, type[BaseModel]]] = [
        ("", Config),
        ("data", DataSpec),
        ("lora", LoraSpec),
        ("train", TrainSpec),
        ("eval", EvalSpec),
        ("ship", ShipSpec),
    ]
    for prefix, model in sections:
        out += [f"## `{prefix or 'top level'}`", "", "| key | type | default | why |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue
            key = f"{prefix}.{name}" if prefix else name
            if field.is_required():
                default = "required"
            else:
                raw_default = field.get_default(call_default_factory=True)
                default = f"`{to_plain_value(raw_default)!r}`" if raw_default is not None else "none"
            type_name = _type_name(annotation).replace("|", "\\|")
            out.append(f"| `{key}` | {type_name} | {default} | {field.description or ''} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "")
