"""What merge and the exports read from an adapter directory: its manifest, the base it names, the
chat template it was trained with, the prompts to check equivalence on, and its file hashes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraforge.config import DataSpec
from loraforge.data.records import read_records
from loraforge.data.types import Message
from loraforge.errors import ModelError
from loraforge.evaluate.scoring import cases_from_records
from loraforge.files import sha256_file
from loraforge.models import MANIFEST_NAME, read_manifest

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", MANIFEST_NAME)

# Checked when the adapter has no golden set (or its file is not where the manifest says): a few
# short general prompts, so a merge is never written unchecked.
BUILTIN_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
    "Explain in one line what a refund is.",
    'Reply with a JSON object with the key "ok" set to true.',
    "Say hello to a customer named Sam.",
)


@dataclass(frozen=True)
class AdapterSource:
    adapter_dir: Path
    manifest: dict[str, Any]
    base_spec: str
    variant: str
    chat_template: str | None  # the training template; None: the base tokenizer's own

    @property
    def base_fingerprint(self) -> str | None:
        value = (self.manifest.get("base") or {}).get("fingerprint")
        return value if isinstance(value, str) else None


def manifest_chat_template(manifest: dict[str, Any]) -> str | None:
    """The training template from a manifest, in either form: `chat_template` as the text, or as
    {"text": ..., "sha256": ...}."""
    value = manifest.get("chat_template")
    if isinstance(value, dict):
        value = value.get("text")
    return value if isinstance(value, str) and value else None


def read_adapter_source(adapter_dir: Path, base: str | None = None) -> AdapterSource:
    """The adapter's manifest and base; `base` (--base) overrides or stands in for the manifest's."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(
            f"{adapter_dir}: no adapter_config.json; point adapter_dir (ADAPTER_DIR) at an adapter directory"
        )
    manifest = read_manifest(adapter_dir) or {}
    spec = base or (manifest.get("base") or {}).get("spec")
    if not isinstance(spec, str) or not spec:
        raise ModelError(
            f"{adapter_dir}: no {MANIFEST_NAME} naming the base it was trained on; pass base= (--base) with the "
            "base's alias, model directory or .gguf"
        )
    variant = str((manifest.get("lora") or {}).get("variant") or "lora")
    return AdapterSource(adapter_dir, manifest, spec, variant, manifest_chat_template(manifest))


def adapter_hashes(adapter_dir: Path) -> dict[str, str]:
    """sha256 of each adapter file that is present (weights, PEFT config, manifest)."""
    return {name: sha256_file(adapter_dir / name) for name in ADAPTER_FILES if (adapter_dir / name).is_file()}


def golden_path(manifest: dict[str, Any]) -> Path | None:
    value = ((manifest.get("config") or {}).get("data") or {}).get("golden")
    return Path(value) if isinstance(value, str) and value else None


def check_prompts(
    source: AdapterSource, prompts: list[list[Message]] | None, max_prompts: int
) -> tuple[list[list[Message]], str]:
    """The conversations to compare models on, and where they came from: `prompts` when given, else
    the golden set's prompts (every turn before the reference answer), else BUILTIN_PROMPTS."""
    if prompts is not None:
        if not prompts:
            raise ModelError("prompts=[]: pass at least one conversation, or None for the golden set")
        return [list(p) for p in prompts[:max_prompts]], "given"
    golden = golden_path(source.manifest)
    if golden is not None and golden.is_file():
        max_row_chars = ((source.manifest.get("config") or {}).get("data") or {}).get("max_row_chars")
        records = read_records(
            golden,
            on_error="skip",
            max_row_chars=int(max_row_chars or DataSpec.model_fields["max_row_chars"].default),
            golden=True,
        ).records
        cases = cases_from_records(records, max_new_tokens=1)
        return [list(c.prompt) for c in cases[:max_prompts]], f"golden {golden}"
    where = f"built-in (golden {golden} not found)" if golden is not None else "built-in (no golden set)"
    return [[{"role": "user", "content": text}] for text in BUILTIN_PROMPTS[:max_prompts]], where
