"""One autograd Function for a LoRA linear layer: base matmul, dropout, A, B and the sum.

PEFT's LoRA forward upcasts the input of every adapted layer to the adapter dtype (fp32) before
dropout, so with a bf16 base each of the 7 adapted layers per block copies its activations to fp32,
draws a dropout mask, adds an fp32 result to the bf16 one and casts back; autograd then replays
every one of those elementwise passes in backward. On a CPU with a small base those passes cost
about as much as the matmuls. Here the adapter runs in the activation dtype (the fp32 adapter
weights are cast, they are r x hidden and cheap), B's product is accumulated into the base output
in place, and backward is written out: no gradient for the frozen weight, one mask multiply.
Memory: the layer keeps its input (shared by the layers that read the same tensor, e.g. q/k/v) and
a bool dropout mask, not a dropped copy plus a mask in the activation dtype per layer.

With an fp32 base the arithmetic is PEFT's, term for term (tests/test_perf_parity.py checks the
gradient against a plain PEFT step). With a bf16 base the adapter's matmuls run in bf16 as they
would under autocast; the adapter weights, their gradients and the optimizer state stay fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class _LoraLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        dropout_p: float,
    ) -> torch.Tensor:
        a = lora_a.to(x.dtype)
        b = lora_b.to(x.dtype) * scaling  # out x r: scaling folded into the small matrix, not the activations
        flat = x.reshape(-1, x.shape[-1])
        keep = None  # dropout: a bool mask (1 byte an element), the scaled input is rebuilt in backward
        inverse_keep = 1.0
        if dropout_p > 0:
            keep, keep_probability = keep_mask(flat.shape, dropout_p, x.device)
            inverse_keep = 1.0 / keep_probability
            hidden = torch.where(keep, flat, 0) @ a.t()
            hidden.mul_(inverse_keep)
        else:
            hidden = flat @ a.t()
        out = torch.nn.functional.linear(x, weight, bias)
        out.view(-1, out.shape[-1]).addmm_(hidden, b.t())
        # x itself, not a dropped copy: q/k/v (and gate/up) share one input tensor, so autograd keeps it once
        ctx.save_for_backward(weight, a, b, x, hidden, keep)
        ctx.scaling = scaling
        ctx.inverse_keep = inverse_keep
        ctx.adapter_dtype = lora_a.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        weight, a, b, x, hidden, keep = ctx.saved_tensors
        flat = x.reshape(-1, x.shape[-1])
        inverse_keep = ctx.inverse_keep
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = grad @ b  # N x r
        grad_x = None
        if ctx.needs_input_grad[0]:
            adapter_part = grad_hidden @ a
            if keep is not None:
                adapter_part = torch.where(keep, adapter_part, 0).mul_(inverse_keep)
            grad_x = torch.addmm(adapter_part, grad, weight.to(grad.dtype)).view(*grad_out.shape[:-1], -1)
        if keep is not None:
            grad_a = (grad_hidden.t() @ torch.where(keep, flat, 0)).to(ctx.adapter_dtype).mul_(inverse_keep)
        else:
            grad_a = (grad_hidden.t() @ flat).to(ctx.adapter_dtype)
        grad_b = (grad.t() @ hidden).to(ctx.adapter_dtype).mul_(ctx.scaling)
        return grad_x, None, None, grad_a, grad_b, None, None


# Dropout on a CPU draws 16-bit lanes of full 64-bit random words, four mask elements a draw: torch.rand
# (one float per element) took ~11% of a SmolLM2 training step on a 2-core CPU, the lanes a third of that.
# The drop probability is rounded to a multiple of 1/65536 (0.05 -> 0.0500031), and the kept inputs
# are scaled by the inverse of the exact keep probability, so the dropped input stays unbiased.
LANE_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A bool mask, True where an element is kept (probability 1 - p), and that keep probability."""
    if device.type != "cpu":  # the GPU's counter-based generator is fast already
        return torch.rand(shape, device=device) >= p, 1.0 - p
    threshold = round(p * LANE_LEVELS)  # lanes below it (of 65536 levels) are dropped
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # every bit random
    lanes = words.view(torch.int16)[:count].view(shape)  # uniform over -32768..32767
    return lanes >= threshold - LANE_LEVELS // 2, 1.0 - threshold / LANE_LEVELS


def _fused_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    active = self.active_adapters
    # eval and inference (self.training False) keep PEFT's forward: what the gate and serving see is
    # exactly what a PeftModel loaded from the saved adapter computes
    fusable = self.training and not (args or kwargs or self.disable_adapters or self.merged)
    if not fusable or len(active) != 1 or not _plain(self, active[0]):
        return LoraLinear.forward(self, x, *args, **kwargs)
    name = active[0]
    base = self.get_base_layer()
    dropout = self.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, nn.Dropout) else 0.0
    return _LoraLinearFn.apply(  # type: ignore[no-any-return]
        x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name]), p
    )


def _plain(layer: LoraLinear, name: str) -> bool:
    """Plain LoRA (also rslora, pissa, LoRA+) on a dense nn.Linear; DoRA and 4-bit bases keep PEFT's forward."""
    return (
        name in layer.lora_A
        and name not in layer.lora_variant
        and type(layer.get_base_layer()) is nn.Linear
        and not layer.use_dora.get(name, False)
    )


def fuse_lora_layers(model: nn.Module) -> int:
    """Route every plain-LoRA linear layer of `model` through the fused Function; returns how many.

    Only training forwards are fused. Other layers (DoRA, 4-bit bases) and other calls (eval mode,
    disabled or merged adapters) keep PEFT's forward, checked at every call, so the model stays
    correct if it is later evaluated, merged or switched off.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and any(_plain(module, n) for n in module.active_adapters):
            forward: Callable[..., torch.Tensor] = MethodType(_fused_forward, module)
            module.forward = forward  # type: ignore[method-assign]
            count += 1
    return count
