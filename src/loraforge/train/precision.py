"""Which dtype the frozen base is stored in, and the 4-bit load for QLoRA.

The adapter weights and the optimizer state stay fp32 whatever the base dtype: bf16 has 8 bits
of mantissa, so small Adam updates to a bf16 weight round away to nothing.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from loraforge.models.base import fast_bf16_available

Precision = Literal["auto", "fp32", "bf16"]


def resolve_base_dtype(precision: Precision, device: torch.device | str = "cpu") -> torch.dtype:
    """auto -> bf16 where the device runs it natively (GPU, CPU with avx512_bf16/AMX), else fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    return torch.bfloat16 if fast_bf16_available(device) else torch.float32


def qlora_quantization_config(compute_dtype: torch.dtype) -> Any:
    """4-bit NF4 with double quantisation (the QLoRA paper's recipe) through bitsandbytes."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
