"""A Llama decoder of our own over an HF `LlamaForCausalLM`'s weights.

Owning the forward lets the engine choose the KV cache and the batch layout (rows join and leave
between steps) and add a per-row LoRA update in every target linear. The weights are the HF
model's tensors (no copy unless `dtype` differs); rotary comes from the model's own rotary module,
so rope scaling (llama3, linear, dynamic) matches what the model was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from loraforge.errors import ModelError

# The linears of one decoder layer, in the names HF (and so PEFT and AdapterWeights) use.
LAYER_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


class Attention(Protocol):
    """How one forward attends: over the new tokens only (prefill) or over a cache (decode)."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (rows, heads, L, head_dim); k, v: (rows, kv_heads, L, head_dim) -> (rows, heads, L, head_dim)."""
        ...


class LoraDelta(Protocol):
    """The per-row LoRA update for one forward (`lora_slots.LoraBatch`)."""

    def delta(self, module: str, x: torch.Tensor) -> torch.Tensor | None: ...


class CausalAttention:
    """Causal attention over the forward's own tokens, no cache (the whole-prompt logits path)."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=True)


@dataclass(frozen=True)
class _Linear:
    name: str  # model.layers.N.self_attn.q_proj: the key AdapterWeights.factors uses
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    linears: dict[str, _Linear]  # by LAYER_LINEARS name


def check_llama(model: nn.Module) -> None:
    """Refuse what this decoder does not compute exactly: another architecture, a PEFT-wrapped or
    quantized model, an activation other than SwiGLU's silu."""
    kind = type(model).__name__
    if kind != "LlamaForCausalLM":
        hint = " (pass the bare base, not a PeftModel)" if "Peft" in kind else ""
        raise ModelError(
            f"BuiltinEngine: the base is a {kind}{hint}; the built-in engine runs LlamaForCausalLM only "
            "(SmolLM2, Llama); serve other architectures with --engine peft"
        )
    config: Any = model.config
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ModelError(
            f"BuiltinEngine: hidden_act={config.hidden_act!r}; the built-in decoder computes SwiGLU (silu) "
            "only; serve this base with --engine peft"
        )
    odd = [n for n, m in model.named_modules() if n.endswith(LAYER_LINEARS) and type(m) is not nn.Linear]
    if odd:
        raise ModelError(
            f"BuiltinEngine: {odd[0]} is a {type(model.get_submodule(odd[0])).__name__}, not a plain "
            "nn.Linear (quantized or adapted); load the base unquantized and without PEFT"
        )


class Decoder:
    """Embeddings, RMSNorm, rotary, GQA attention (SDPA), SwiGLU MLP and the head, over HF weights."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None) -> None:
        check_llama(model)
        hf: Any = model  # nn.Module's attribute type (Tensor | Module) hides HF's structure from mypy
        config, inner = hf.config, hf.model
        self.dtype = dtype or next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.n_heads = int(config.num_attention_heads)
        self.n_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        self.n_layers = int(config.num_hidden_layers)
        self.context_length = int(config.max_position_embeddings)
        self.eps = float(config.rms_norm_eps)
        self.rotary = inner.rotary_emb
        self.embed = self._weight(inner.embed_tokens.weight)
        self.final_norm = self._weight(inner.norm.weight)
        # lm_head.weight is the embedding itself when tied (HF ties them on load), so this covers both
        self.head = self._weight(hf.lm_head.weight)
        self.layers = [self._layer(i, layer) for i, layer in enumerate(inner.layers)]

    def _weight(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(self.dtype)

    def _layer(self, index: int, layer: Any) -> _Layer:
        linears = {}
        for short in LAYER_LINEARS:
            module = layer.get_submodule(short)
            bias = self._weight(module.bias) if module.bias is not None else None
            linears[short] = _Linear(f"model.layers.{index}.{short}", self._weight(module.weight), bias)
        return _Layer(
            self._weight(layer.input_layernorm.weight), self._weight(layer.post_attention_layernorm.weight), linears
        )

    @property
    def module_shapes(self) -> Mapping[str, tuple[int, int]]:
        """Every adaptable linear: name -> (in_features, out_features)."""
        return {
            lin.name: (int(lin.weight.shape[1]), int(lin.weight.shape[0]))
            for layer in self.layers
            for lin in layer.linears.values()
        }

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        attention: Attention,
        lora: LoraDelta | None = None,
        last_only: bool = True,
    ) -> torch.Tensor:
        """ids, positions: (rows, L). Returns logits (rows, vocab) at each row's last token, or
        (rows, L, vocab) with last_only=False."""
        hidden = F.embedding(ids, self.embed)
        cos, sin = self.rotary(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        for index, layer in enumerate(self.layers):
            hidden = hidden + self._attention(
                index, layer, _rms_norm(hidden, layer.input_norm, self.eps), cos, sin, attention, lora
            )
            hidden = hidden + self._mlp(layer, _rms_norm(hidden, layer.post_norm, self.eps), lora)
        if last_only:
            hidden = hidden[:, -1]
        return F.linear(_rms_norm(hidden, self.final_norm, self.eps), self.head)

    def _attention(
        self,
        index: int,
        layer: _Layer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: Attention,
        lora: LoraDelta | None,
    ) -> torch.Tensor:
        rows, length, _ = x.shape
        q = _linear(layer.linears["self_attn.q_proj"], x, lora).view(rows, length, self.n_heads, self.head_dim)
        k = _linear(layer.linears["self_attn.k_proj"], x, lora).view(rows, length, self.n_kv_heads, self.head_dim)
        v = _linear(layer.linears["self_attn.v_proj"], x, lora).view(rows, length, self.n_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = attention.attend(index, q, k, v).transpose(1, 2).reshape(rows, length, self.n_heads * self.head_dim)
        return _linear(layer.linears["self_attn.o_proj"], out, lora)

    def _mlp(self, layer: _Layer, x: torch.Tensor, lora: LoraDelta | None) -> torch.Tensor:
        gate = _linear(layer.linears["mlp.gate_proj"], x, lora)
        up = _linear(layer.linears["mlp.up_proj"], x, lora)
        return _linear(layer.linears["mlp.down_proj"], F.silu(gate) * up, lora)


def _linear(linear: _Linear, x: torch.Tensor, lora: LoraDelta | None) -> torch.Tensor:
    out = F.linear(x, linear.weight, linear.bias)
    delta = lora.delta(linear.name, x) if lora is not None else None
    return out if delta is None else out + delta


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # in fp32 then back, as LlamaRMSNorm does: bf16 variance loses the small rows
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin
