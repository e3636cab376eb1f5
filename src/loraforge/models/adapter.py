"""Save and load adapters: PEFT format plus the loraforge manifest, written atomically.

An adapter saved here loads unchanged with `peft.PeftModel.from_pretrained`; an adapter written
by plain PEFT (no manifest) loads here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel

from loraforge.errors import ModelError
from loraforge.files import atomic_dir

MANIFEST_NAME = "loraforge.json"
MANIFEST_FORMAT = 1


def save_adapter(model: PeftModel, adapter_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write adapter_config.json + adapter_model.safetensors + loraforge.json into `adapter_dir`."""
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        payload = {"format": MANIFEST_FORMAT, **manifest}
        (tmp / MANIFEST_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return adapter_dir


def read_manifest(adapter_dir: Path) -> dict[str, Any] | None:
    path = adapter_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: manifest is not valid JSON ({exc}); re-save the adapter") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: manifest must be a JSON object; re-save the adapter")
    return data


def load_adapter(
    base_model: PreTrainedModel,
    adapter_dir: Path,
    base_fingerprint: str | None = None,
    trainable: bool = False,
    adapter_name: str = "default",
) -> PeftModel:
    """Load an adapter onto a base; refuse one whose manifest names another base."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json; is this a PEFT adapter directory?")
    manifest = read_manifest(adapter_dir)
    expected = (manifest or {}).get("base", {}).get("fingerprint")
    if base_fingerprint and expected and expected != base_fingerprint:
        raise ModelError(
            f"{adapter_dir}: adapter was trained on base {expected}, but the loaded base is "
            f"{base_fingerprint}; load the base it was trained on"
        )
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable, adapter_name=adapter_name)
