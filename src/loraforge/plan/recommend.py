"""Which method and hardware tier a config needs: the cheapest tier its peak memory fits,
relaxing micro-batch and checkpointing first, then FSDP over 80 GB GPUs (4-bit QLoRA in between
once it is verified on a GPU; a config that sets it keeps it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from loraforge.config import Config
from loraforge.plan.advise import QLORA_ON_GPU_VERIFIED, data_size_advice
from loraforge.plan.hardware import CONSUMER_TIER, GIB, GPU_TIERS, MULTI_GPU_TIER, SINGLE_80_TIER, Tier
from loraforge.plan.memory import Precision, StepShape, dynamic_bytes, static_bytes
from loraforge.plan.shapes import LinearGroup, ModelShape

CONSUMER_LABEL = "single consumer GPU (24 GB)"
SINGLE_80_LABEL = "single 80 GB GPU"
MAX_FSDP_GPUS = 1024


@dataclass(frozen=True)
class Recommendation:
    method: str  # the lora.variant to train with
    tier: str
    reasons: list[str] = field(default_factory=list)
    config_keys: dict[str, Any] = field(default_factory=dict)


def peak_bytes(shape: ModelShape, groups: list[LinearGroup], trainable: int, step: StepShape, gpus: int = 1) -> int:
    return static_bytes(shape, trainable, step.precision) // gpus + dynamic_bytes(shape, groups, step)


def gpus_needed(shape: ModelShape, groups: list[LinearGroup], trainable: int, step: StepShape, tier: Tier) -> int:
    """1 when the run fits one device; else the power of two of GPUs over which FSDP-sharded
    weights and optimizer state leave room for one GPU's activations (1 if nothing can make room)."""
    if not tier.is_gpu or peak_bytes(shape, groups, trainable, step) <= tier.usable_bytes:
        return 1
    room = tier.usable_bytes - dynamic_bytes(shape, groups, step)
    if room <= 0:
        return 1  # the activations alone overflow one GPU: sharding the weights cannot help
    needed = max(2, math.ceil(static_bytes(shape, trainable, step.precision) / room))
    return min(2 ** math.ceil(math.log2(needed)), MAX_FSDP_GPUS)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def recommend(
    config: Config,
    shape: ModelShape,
    groups: list[LinearGroup],
    trainable: int,
    step: StepShape,
    examples: int | None,
) -> Recommendation:
    """The configured variant on the cheapest GPU tier it fits, or what to change so it fits."""
    precision: Precision = "bf16"
    if config.lora.variant == "qlora":
        precision = "nf4"
    elif config.train.precision == "fp32":
        precision = "fp32"
    gpu_step = replace(step, on_gpu=True, precision=precision)
    relaxed = replace(gpu_step, micro_batch_size=1, gradient_checkpointing=True)
    tiers = [(CONSUMER_LABEL, GPU_TIERS[CONSUMER_TIER]), (SINGLE_80_LABEL, GPU_TIERS[SINGLE_80_TIER])]
    chosen: Recommendation | None = None
    for label, tier in tiers:
        peak = peak_bytes(shape, groups, trainable, gpu_step)
        if peak <= tier.usable_bytes:
            chosen = Recommendation(config.lora.variant, label, [f"peak {_gib(peak)} fits {_gib(tier.usable_bytes)}"])
            break
        if peak_bytes(shape, groups, trainable, relaxed) <= tier.usable_bytes:
            keys: dict[str, Any] = {"train.micro_batch_size": 1, "train.gradient_checkpointing": True}
            if isinstance(config.train.grad_accum, int):  # auto keeps the examples a step by itself
                keys["train.grad_accum"] = config.train.grad_accum * config.train.micro_batch_size
            reason = f"fits {_gib(tier.usable_bytes)} at micro-batch 1 with gradient checkpointing (same rows per step)"
            chosen = Recommendation(config.lora.variant, label, [reason], keys)
            break
    if chosen is None and config.lora.variant != "qlora" and QLORA_ON_GPU_VERIFIED:
        quantised = replace(relaxed, precision="nf4")
        for label, tier in tiers:
            if peak_bytes(shape, groups, trainable, quantised) <= tier.usable_bytes:
                reason = f"bf16 weights do not fit one 80 GB GPU; a 4-bit NF4 base fits {_gib(tier.usable_bytes)}"
                keys = {"lora.variant": "qlora", "train.micro_batch_size": 1, "train.gradient_checkpointing": True}
                chosen = Recommendation("qlora", label, [reason], keys)
                break
    if chosen is None:
        multi = GPU_TIERS[MULTI_GPU_TIER]
        n = gpus_needed(shape, groups, trainable, relaxed, multi)
        reason = f"no single GPU holds it: FSDP shards weights and optimizer state over {n} x 80 GB"
        chosen = Recommendation(config.lora.variant, f"multi-GPU FSDP ({n} x 80 GB)", [reason])
    size_keys, size_reason = data_size_advice(examples, config.lora.r)
    if size_reason is not None:
        chosen.reasons.append(size_reason)
        chosen.config_keys.update(size_keys)
    return chosen
