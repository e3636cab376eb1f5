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
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from transformers import PreTrainedModel

from loraforge.errors import ModelError
from loraforge.files import atomic_dir, write_bytes_atomic, write_json_atomic
from loraforge.models.fingerprint import UNREADABLE_WEIGHTS
from loraforge.models.manifest import MANIFEST_FORMAT, MANIFEST_NAME, manifest_base_fingerprint, validate_manifest

PEFT_CARD = "README.md"  # PEFT's boilerplate card; the ship stage writes the real one from the manifest
ADAPTER_CONFIG = "adapter_config.json"


def save_adapter(
    model: PeftModel, adapter_dir: Path, manifest: dict[str, Any], initial_adapter_dir: Path | None = None
) -> Path:
    """Write adapter_config.json + adapter_model.safetensors + loraforge.json into `adapter_dir`.

    The manifest is checked against its schema before anything is written. With
    `initial_adapter_dir` (PiSSA's init), the adapter is converted to plain LoRA for the original base.
    adapter_config.json names the base by its public id (manifest base.hub_id) where one is known."""
    payload = {"format": MANIFEST_FORMAT, **manifest}
    validate_manifest(payload, adapter_dir / MANIFEST_NAME)
    initial = str(initial_adapter_dir) if initial_adapter_dir is not None else None
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, path_initial_model_for_weight_conversion=initial)
        (tmp / PEFT_CARD).unlink(missing_ok=True)  # "[More Information Needed]" throughout, the base by a cache path
        hub_id = (payload.get("base") or {}).get("hub_id")
        if hub_id:
            name_base_publicly(tmp, hub_id)
        (tmp / MANIFEST_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return adapter_dir


def name_base_publicly(adapter_dir: Path, hub_id: str) -> None:
    """Set adapter_config.json's base_model_name_or_path to the base's public id: PEFT records the
    local directory it loaded, a cache path on the training machine that means nothing elsewhere.
    Loading is unaffected (PeftModel.from_pretrained takes the base model object)."""
    path = adapter_dir / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = hub_id
    write_json_atomic(path, config)


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def rescale_adapter(adapter_dir: Path, scale: float) -> Path:
    """Multiply every lora_B tensor in `adapter_dir`'s weights by `scale` (W + s*B@A), rewriting the
    file atomically: every reader (PEFT, merge, the serve engine, vLLM) then sees the scaled update.
    Refused for DoRA (its magnitude vector makes the update non-linear in B)."""
    path = adapter_dir / ADAPTER_WEIGHTS
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iter)
    if any("lora_magnitude_vector" in key for key in tensors):
        raise ModelError(f"{path}: a DoRA adapter's update is not linear in lora_B; it cannot be rescaled")
    scaled = [key for key in tensors if ".lora_B." in key]
    if not scaled:
        raise ModelError(f"{path}: no lora_B tensors; is this a LoRA adapter?")
    for key in scaled:
        tensors[key] = (tensors[key].float() * scale).to(tensors[key].dtype)
    write_bytes_atomic(path, save(tensors, metadata=metadata))
    return path


def write_manifest(adapter_dir: Path, manifest: dict[str, Any]) -> Path:
    """Replace `adapter_dir`/loraforge.json atomically, after checking it against the schema."""
    path = adapter_dir / MANIFEST_NAME
    validate_manifest(manifest, path)
    write_json_atomic(path, manifest)
    return path


def read_manifest(adapter_dir: Path) -> dict[str, Any] | None:
    """The adapter's manifest, checked against its schema; None for a plain PEFT adapter (no manifest)."""
    path = adapter_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: manifest is not valid JSON ({exc}); re-save the adapter") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: manifest must be a JSON object; re-save the adapter")
    validate_manifest(data, path)
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
    expected = manifest_base_fingerprint(manifest)
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
