"""Peak memory of one LoRA training step, component by component, from shapes alone.

The activation terms count what autograd saves for backward in a Llama-style decoder layer
(pre-norm RMSNorm, grouped-query SDPA attention, SwiGLU MLP) whose base weights are frozen and
whose adapters are fp32. They were derived by listing every saved tensor with
torch.autograd.graph.saved_tensors_hooks (transformers 5.23, PEFT 0.21) and match that count to
the byte; docs/plan.md walks through each term and docs/PERFORMANCE.md compares the total with
measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loraforge.plan.hardware import CUDA_CONTEXT_BYTES
from loraforge.plan.shapes import LinearGroup, ModelShape

Precision = Literal["fp32", "bf16", "nf4"]
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "nf4": 2}  # nf4 computes (and saves activations) in bf16
ADAPTER_BYTES = 4  # adapters, their gradients and the optimizer state stay fp32 (train/precision.py)
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, fp32, one of each per trainable parameter
NF4_BLOCK = 64  # bitsandbytes 4-bit block size: one absmax constant per 64 weights
NF4_DOUBLE_QUANT_BLOCK = 256  # double quantisation: absmax stored as 8 bits, one fp32 scale per 256 blocks
# What one loss position holds at the start of backward: the fp32 log-softmax that cross-entropy
# saves, its incoming gradient and the gradient it returns (3 x 4 bytes per vocab entry).
LOSS_BYTES_PER_VOCAB = 12
# Inputs of these modules are one tensor: without dropout or a dtype cast PEFT's lora_A saves it once.
SHARED_INPUTS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})
# o_proj's input is the SDPA output, which attention already saves (same storage).
SAVED_BY_ATTENTION = {"o_proj"}
BACKWARD_WORKING_HIDDEN_COPIES = 4  # fp32 hidden-size gradients alive while one checkpointed layer runs backward
# CPU framework overhead (allocator arenas, oneDNN kernels and scratch): measured, see PERFORMANCE.md.
CPU_OVERHEAD_BYTES = 24 * 1024**2


@dataclass(frozen=True)
class StepShape:
    """What one training step looks like, from the config and the data report."""

    precision: Precision
    micro_batch_size: int
    seq_len: int
    loss_fraction: float  # share of tokens that carry a label (the head runs on those only)
    dropout: float
    gradient_checkpointing: bool
    on_gpu: bool
    packing: bool
    lora_r: int
    variant: str
    top_layers: int | None = None  # lora.top_layers: backward (and what it saves) covers these layers only

    def backward_layers(self, shape: ModelShape) -> int:
        """Layers that backward runs through: the adapted ones; below them nothing needs a gradient."""
        return shape.layers if self.top_layers is None else self.top_layers  # plan_run refuses more


def weight_bytes(shape: ModelShape, precision: Precision) -> int:
    """The frozen base: 4 or 2 bytes a weight, or NF4 (half a byte) for linear layers plus their
    quantisation constants, with embeddings, norms and the output head kept in bf16."""
    if precision != "nf4":
        return shape.total_params * DTYPE_BYTES[precision]
    quantised = shape.linear_params
    blocks = quantised / NF4_BLOCK
    constants = blocks * 1 + blocks / NF4_DOUBLE_QUANT_BLOCK * 4
    return int(quantised / 2 + constants + (shape.total_params - quantised) * 2)


# Variants the training loop routes through its fused LoRA layers (train/fused_lora.py); DoRA and
# 4-bit bases (qlora) keep PEFT's forward.
FUSED_VARIANTS = {"lora", "rslora", "pissa", "loraplus"}


def lora_saved_bytes_per_token(groups: list[LinearGroup], step: StepShape, base_bytes: int) -> float:
    """Per layer and token: what each adapter saves (its input, dropout mask, rank-r activation)."""
    if step.variant in FUSED_VARIANTS:
        return fused_lora_saved_bytes_per_token(groups, step, base_bytes)
    total = 0.0
    counted_shared: set[int] = set()
    # CPU dropout multiplies by a mask in the input dtype (fp32 here); CUDA's fused dropout keeps a bool mask
    mask_bytes = 1 if step.on_gpu else ADAPTER_BYTES
    for group in groups:
        total += step.lora_r * ADAPTER_BYTES
        if step.variant == "dora":
            total += group.out_features * 2 * ADAPTER_BYTES  # base and adapter outputs, for the magnitude grad
        if step.dropout > 0:
            total += group.in_features * (ADAPTER_BYTES + mask_bytes)
        elif base_bytes != ADAPTER_BYTES:
            total += group.in_features * ADAPTER_BYTES  # PEFT casts the input to fp32 for each adapter
        elif not _input_counted(group.name, counted_shared):
            total += group.in_features * base_bytes
    return total


def fused_lora_saved_bytes_per_token(groups: list[LinearGroup], step: StepShape, base_bytes: int) -> float:
    """The fused layers keep the input in the activation dtype (once for layers that share it), a
    bool dropout mask, and the rank-r product in the activation dtype."""
    total = 0.0
    counted_shared: set[int] = set()
    for group in groups:
        total += step.lora_r * base_bytes
        if step.dropout > 0:
            total += group.in_features  # bool mask
        if not _input_counted(group.name, counted_shared):
            total += group.in_features * base_bytes
    return total


def _input_counted(name: str, counted_shared: set[int]) -> bool:
    """Whether this layer's input is already saved by another tensor (attention, or a layer sharing it)."""
    if name in SAVED_BY_ATTENTION:
        return True
    shared = next((i for i, names in enumerate(SHARED_INPUTS) if name in names), None)
    if shared is None:
        return False
    if shared in counted_shared:
        return True
    counted_shared.add(shared)
    return False


def layer_bytes_per_token(shape: ModelShape, groups: list[LinearGroup], step: StepShape) -> float:
    """Saved-for-backward bytes of one decoder layer per token."""
    d = DTYPE_BYTES[step.precision]
    norms = 2 * (shape.hidden_size * 4 + 4)  # RMSNorm upcasts to fp32 and saves it with its rsqrt
    attention = (2 * shape.q_dim + 2 * shape.kv_dim) * d + shape.heads * 4  # q, k, v, out, fp32 logsumexp
    mlp = 3 * shape.intermediate_size * d  # gate output (SiLU input), SiLU output, up output
    per_layer_groups = [LinearGroup(g.name, g.in_features, g.out_features, 1) for g in groups]
    return norms + attention + mlp + lora_saved_bytes_per_token(per_layer_groups, step, d)


def activation_bytes(shape: ModelShape, groups: list[LinearGroup], step: StepShape) -> int:
    """Everything saved for backward across the layers backward runs through (with checkpointing:
    their inputs + one layer); layers below the lowest adapter save nothing."""
    tokens = step.micro_batch_size * step.seq_len
    layer = layer_bytes_per_token(shape, groups, step) * tokens
    final_norm = (shape.hidden_size * 4 + 4) * tokens
    # packed rows on GPU: transformers builds a boolean block-diagonal mask, one byte per query-key pair
    mask = step.micro_batch_size * step.seq_len**2 if step.packing and step.on_gpu else 0
    if step.gradient_checkpointing:
        inputs = step.backward_layers(shape) * tokens * shape.hidden_size * DTYPE_BYTES[step.precision]
        # backward frees the loss tensors before it recomputes the last layer, so the recomputed
        # layer only adds what exceeds them
        recomputed = max(0, layer - logits_bytes(shape, step))
        # while that layer runs backward: the residual gradient in and out, and its two branches' gradients
        working = BACKWARD_WORKING_HIDDEN_COPIES * shape.hidden_size * 4 * tokens
        return int(inputs + recomputed + working + final_norm + mask)
    return int(step.backward_layers(shape) * layer + final_norm + mask)


def logits_bytes(shape: ModelShape, step: StepShape) -> int:
    """The output head runs on loss positions only (train/loss.py); fp32 log-softmax and grads."""
    loss_tokens = step.micro_batch_size * step.seq_len * step.loss_fraction
    return int(loss_tokens * shape.vocab_size * LOSS_BYTES_PER_VOCAB)


def static_bytes(shape: ModelShape, trainable_params: int, precision: Precision) -> int:
    """What does not grow with the batch: frozen weights, fp32 adapter, its gradients, AdamW state."""
    return weight_bytes(shape, precision) + trainable_params * ADAPTER_BYTES * (2 + ADAMW_STATES)


def dynamic_bytes(shape: ModelShape, groups: list[LinearGroup], step: StepShape) -> int:
    """What grows with micro_batch_size x seq_len, plus the fixed framework overhead."""
    overhead = CUDA_CONTEXT_BYTES if step.on_gpu else CPU_OVERHEAD_BYTES
    return activation_bytes(shape, groups, step) + logits_bytes(shape, step) + overhead


def memory_breakdown(
    shape: ModelShape, groups: list[LinearGroup], trainable_params: int, step: StepShape
) -> dict[str, int]:
    """Peak bytes by component and their total. The peak is the start of backward: every saved
    activation and the loss tensors are alive, and so are the fp32 adapter, its gradients (kept
    across gradient-accumulation micro-batches) and AdamW's two states."""
    parts = {
        "weights": weight_bytes(shape, step.precision),
        "adapter": trainable_params * ADAPTER_BYTES,
        "gradients": trainable_params * ADAPTER_BYTES,
        "optimizer": trainable_params * ADAPTER_BYTES * ADAMW_STATES,
        "activations": activation_bytes(shape, groups, step),
        "logits": logits_bytes(shape, step),
        # a GPU: CUDA context, cuBLAS workspace, kernels; a CPU: allocator arenas and oneDNN scratch
        "overhead": CUDA_CONTEXT_BYTES if step.on_gpu else CPU_OVERHEAD_BYTES,
    }
    parts["total"] = sum(parts.values())
    return parts
