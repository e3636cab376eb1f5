"""The adapter manifest's contract: a JSON Schema (manifest.schema.json, shipped beside this file)
checked on every write and every load, and the readers of its fixed key paths.

docs/manifest.md documents every field; its table is generated from the schema's descriptions
(`manifest_field_rows`), so the two cannot drift.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loraforge.errors import ModelError

MANIFEST_NAME = "loraforge.json"
MANIFEST_FORMAT = 2  # 1: the layout before the schema (chat_template a string, "train" for "training")
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
MANIFEST_DOC = "docs/manifest.md"
PIPE = "\\|"  # a | inside a Markdown table cell


@functools.cache
def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12)."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(manifest_schema())


def _key_path(error: Any) -> str:
    """Dotted path of the failing key; for a missing key, the key itself (base.fingerprint)."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        parts += missing[:1]
    return ".".join(parts) or "(top level)"


def manifest_problems(payload: Any) -> list[tuple[str, str]]:
    """Every schema violation as (key path, what is wrong), shallowest first."""
    errors = sorted(_validator().iter_errors(payload), key=lambda e: (len(e.absolute_path), _key_path(e)))
    return [(_key_path(e), e.message) for e in errors]


def validate_manifest(payload: Any, path: Path) -> None:
    """Raise ModelError naming `path` and the first failing key path when `payload` breaks the schema."""
    problems = manifest_problems(payload)
    if not problems:
        return
    key, message = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ModelError(
        f"{path}: manifest key '{key}': {message}{more}; the manifest does not match its schema "
        f"(loraforge/models/{SCHEMA_PATH.name}, fields in {MANIFEST_DOC}): train or export the adapter again"
    )


def utc_timestamp(now: datetime.datetime | None = None) -> str:
    """`created_at`: ISO-8601 in UTC to the second, e.g. 2026-12-01T23:30:00Z."""
    moment = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_chat_template(manifest: dict[str, Any] | None) -> str | None:
    """The template text the adapter was trained with: chat_template.text, or format 1's string."""
    recorded = (manifest or {}).get("chat_template")
    if isinstance(recorded, dict):
        recorded = recorded.get("text")
    return recorded if isinstance(recorded, str) and recorded.strip() else None


def manifest_base_fingerprint(manifest: dict[str, Any] | None) -> str | None:
    fingerprint = ((manifest or {}).get("base") or {}).get("fingerprint")
    return fingerprint if isinstance(fingerprint, str) else None


def _walk(schema: dict[str, Any], prefix: str, writer: str) -> Iterator[tuple[str, str, str, str]]:
    """(key path, type, description, writer) for every documented property under `schema`."""
    for name, node in schema.get("properties", {}).items():
        node = _resolve(node)
        path = f"{prefix}.{name}" if prefix else name
        who = node.get("x-written-by", writer)
        if "description" in node:
            yield path, _type_name(node), node["description"], who
        for option in node.get("anyOf", []):
            yield from _walk(_resolve(option), path, who)
        yield from _walk(node, path, who)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A node with its local `$ref` merged in (the node's own keys win)."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node
    target: Any = manifest_schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target), **{k: v for k, v in node.items() if k != "$ref"}}


def _type_name(node: dict[str, Any]) -> str:
    if "enum" in node:
        return f" {PIPE} ".join(json.dumps(v) for v in node["enum"])
    if "anyOf" in node:
        return f" {PIPE} ".join(_type_name(_resolve(option)) for option in node["anyOf"])
    kind = node.get("type", "any")
    names = kind if isinstance(kind, list) else [kind]
    if "pattern" in node and names == ["string"]:
        return "string (pattern)"
    return f" {PIPE} ".join(str(n) for n in names)


def manifest_field_rows() -> list[tuple[str, str, str, str]]:
    """(key path, type, meaning, written by) for every field of the current format."""
    current = manifest_schema()["$defs"]["current"]
    top = manifest_schema()["properties"]["format"]
    rows = [("format", "2 (1: read only)", top["description"], top["x-written-by"])]
    return rows + [row for row in _walk(current, "", "train") if row[0] != "format"]


def manifest_field_table() -> str:
    """docs/manifest.md's field table, in Markdown."""
    lines = ["| key path | type | meaning | written by |", "|---|---|---|---|"]
    for path, kind, meaning, writer in manifest_field_rows():
        escaped = meaning.replace("|", PIPE)
        lines.append(f"| `{path}` | {kind} | {escaped} | {writer} |")
    return "\n".join(lines) + "\n"
