"""The config as text: the YAML that `loraforge init` and `config check` write, each key with its
reason as a comment, and the markdown reference behind docs/config.md. Both are generated from the
fields in `loraforge.config`, so a reason lives in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from loraforge.config import (
    Config,
    DataSpec,
    DpoSpec,
    EvalSpec,
    FewShotSpec,
    JudgeSpec,
    LoraSpec,
    ShipSpec,
    StrengthSpec,
    TrainSpec,
)


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


@dataclass(frozen=True)
class ReferenceRow:
    """One config key as docs/config.md, `loraforge config explain` and init's comments state it."""

    section: str  # "" for the top level
    key: str  # dotted path: train.lr
    type_name: str
    default: str  # rendered: `2e-4`, none, required
    why: str  # the field's description: what it does and why this default


REFERENCE_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("", Config),
    ("data", DataSpec),
    ("lora", LoraSpec),
    ("train", TrainSpec),
    ("train.dpo", DpoSpec),
    ("train.strength", StrengthSpec),
    ("eval", EvalSpec),
    ("eval.few_shot", FewShotSpec),
    ("eval.judge", JudgeSpec),
    ("ship", ShipSpec),
]


def reference_rows() -> list[ReferenceRow]:
    """Every config key with its type, default and reason, in the reference's order."""
    rows = []
    for prefix, model in REFERENCE_SECTIONS:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue
            if field.is_required():
                default = "required"
            else:
                raw_default = field.get_default(call_default_factory=True)
                default = f"`{to_plain_value(raw_default)!r}`" if raw_default is not None else "none"
            key = f"{prefix}.{name}" if prefix else name
            rows.append(ReferenceRow(prefix, key, _type_name(annotation), default, field.description or ""))
    return rows


def reference_markdown() -> str:
    """docs/config.md, generated from the fields (CI checks it is current)."""
    out = [
        "# Config reference",
        "",
        "Generated from `src/loraforge/config.py` by `loraforge config docs`; do not edit by hand.",
        "",
    ]
    rows = reference_rows()
    for prefix, _ in REFERENCE_SECTIONS:
        out += [f"## `{prefix or 'top level'}`", "", "| key | type | default | why |", "|---|---|---|---|"]
        for row in (r for r in rows if r.section == prefix):
            type_name = row.type_name.replace("|", "\\|")
            out.append(f"| `{row.key}` | {type_name} | {row.default} | {row.why} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "")
