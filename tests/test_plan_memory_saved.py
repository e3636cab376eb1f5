"""The plan's activation terms against what autograd really saves in one decoder layer of the
training path (fused LoRA layers, head at loss positions), counted with saved_tensors_hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch

from loraforge.config import LoraSpec
from loraforge.models import attach_lora, load_base
from loraforge.plan import model_shape
from loraforge.plan.memory import StepShape, layer_bytes_per_token
from loraforge.plan.shapes import target_groups
from loraforge.train.fused_lora import fuse_lora_layers
from loraforge.train.loss import TokenLossSum


def _saved_bytes_in_layer(model: torch.nn.Module, layer: torch.nn.Module, tokens: int) -> int:
    """Bytes of the storages autograd saves for the first time while `layer` runs forward: parameters
    and tensors saved earlier (rotary cos/sin, shared by every layer) are not the layer's."""
    ids = torch.randint(10, 400, (1, tokens))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(tokens)[None]}
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    inside = [False]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            if inside[0]:
                storages[storage.data_ptr()] = storage.nbytes()
            else:
                seen.add(storage.data_ptr())
        return tensor

    pre = layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    post = layer.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            TokenLossSum(model)(**batch).backward()
    finally:
        pre.remove()
        post.remove()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_layer_activation_bytes_match_what_autograd_saves(tiny_base_dir: Path, dtype: str, dropout: float) -> None:
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    spec = LoraSpec(r=8, alpha=16, dropout=dropout)
    model = attach_lora(load_base(str(tiny_base_dir), dtype=torch_dtype).model, spec)
    assert fuse_lora_layers(model) > 0
    model.train()
    # layer 1: layer 0's input comes from the frozen embedding and needs no gradient, so its norm saves nothing
    layer = model.get_base_model().model.layers[1]
    # per token: the slope between two lengths (the cast adapter matrices are saved once, whatever the length)
    measured = (_saved_bytes_in_layer(model, layer, 96) - _saved_bytes_in_layer(model, layer, 32)) / 64

    shape = model_shape(str(tiny_base_dir))
    precision: Literal["fp32", "bf16"] = "fp32" if dtype == "fp32" else "bf16"
    step = StepShape(precision=precision, micro_batch_size=1, seq_len=1, loss_fraction=1.0, dropout=dropout,
                     gradient_checkpointing=False, on_gpu=False, packing=True, lora_r=8, variant="lora")  # fmt: skip
    predicted = layer_bytes_per_token(shape, target_groups(shape, "all-linear"), step)
    assert predicted == measured, f"predicted {predicted:,.0f} B a token, autograd saved {measured:,.1f} B"
