"""The shipped adapter: OUTPUT/adapter/ in PEFT format with the loraforge manifest.

PiSSA trains against a base whose weights it changed (W_res = W - A0 B0). Its adapter is saved
converted to plain LoRA (PEFT's path_initial_model_for_weight_conversion: rank doubles, A' =
[A | A0], B' = [B | -B0]) so it loads on the ORIGINAL base like any other adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import PeftModel

from loraforge.files import atomic_dir
from loraforge.models import save_adapter

PISSA_INIT_SUBDIR = "pissa_init"


def save_initial_adapter(model: PeftModel, out_dir: Path) -> Path:
    """Before any training step: the PiSSA init (A0, B0) the conversion subtracts at export."""
    path = out_dir / PISSA_INIT_SUBDIR
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
    return path


def export_adapter(
    model: PeftModel, adapter_dir: Path, manifest: dict[str, Any], initial_adapter_dir: Path | None = None
) -> Path:
    """Save the adapter + manifest atomically; with `initial_adapter_dir`, convert PiSSA to plain LoRA."""
    if initial_adapter_dir is None:
        return save_adapter(model, adapter_dir, manifest)
    return save_adapter(model, adapter_dir, {**manifest, "pissa_converted_to_lora": True}, initial_adapter_dir)
