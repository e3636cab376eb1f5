"""Save and load adapters: PEFT format plus the loraforge manifest, written atomically.

An adapter saved here loads unchanged with `peft.PeftModel.from_pretrained`; an adapter written
by plain PEFT (no manifest) loads here too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from loraforge.errors import ModelError
from loraforge.files import atomic_dir
from loraforge.models.fingerprint import UNREADABLE_WEIGHTS

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
    try:
        return PeftModel.from_pretrained(
            base_model, str(adapter_dir), is_trainable=trainable, adapter_name=adapter_name
        )
    except UNREADABLE_WEIGHTS as exc:
        raise unreadable_adapter(adapter_dir, exc) from exc


def unreadable_adapter(adapter_dir: Path, exc: Exception) -> ModelError:
    return ModelError(
        f"{adapter_dir}: cannot load the adapter ({type(exc).__name__}: {exc}); adapter_model.safetensors is "
        "truncated or corrupt: copy the adapter again or train it again"
    )


def can_merge(model: PeftModel) -> bool:
    """True where folding the active adapter into the base weights changes nothing but fp32
    rounding: every LoRA layer wraps a dense fp32 nn.Linear and nothing is merged yet. A 4-bit
    (QLoRA) base would be re-quantized; in bf16, W + s*B@A keeps 8 bits of mantissa, so a small
    update is partly rounded away, and the gate must judge the adapter that will be served."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return bool(layers) and all(
        type(base := m.get_base_layer()) is nn.Linear and base.weight.dtype == torch.float32 and not m.merged
        for m in layers
    )


@contextlib.contextmanager
def merged_adapter(model: PeftModel, merge: bool = True) -> Iterator[bool]:
    """While inside, the active adapter is folded into the base weights (W + s*B@A) where
    `can_merge` allows: generation then runs the base's matmuls alone, no per-layer LoRA matmuls
    and adds (the demo's adapter half of the gate: 155 s -> 128 s on a 2-core CPU, the same greedy
    answers on all 169 rows). On the way out PEFT unmerges and the base weights are restored bit
    for bit from a copy kept on the CPU ((W + D) - D is W only up to rounding, and the base's
    answers are cached by a checksum of its weights). Yields whether it merged."""
    merged = merge and can_merge(model)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    if merged:
        for layer in model.modules():
            if isinstance(layer, LoraLayer):
                params = [p for p in layer.get_base_layer().parameters(recurse=False) if p is not None]
                saved += [(p, p.detach().to("cpu", copy=True)) for p in params]  # weight, bias
        model.merge_adapter()
    try:
        yield merged
    finally:
        if merged:
            model.unmerge_adapter()
            with torch.no_grad():
                for param, original in saved:
                    param.copy_(original)
