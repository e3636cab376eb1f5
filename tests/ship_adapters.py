"""Real PEFT adapters on the tiny base for the merge and export tests, with B initialised non-zero
so the adapter changes the output (a fresh LoRA's B is zero and its merge would prove nothing)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from manifests import valid_manifest
from peft import PeftModel

from loraforge.config import LoraSpec
from loraforge.models import attach_lora, load_base, save_adapter
from loraforge.train.precision import qlora_quantization_config


def randomize_lora_b(model: PeftModel, seed: int = 1, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_adapter(
    base_dir: str | Path,
    out: Path,
    variant: str = "lora",
    r: int = 4,
    chat_template: Any = None,
    golden: Path | None = None,
    b_std: float = 0.05,
    seed: int = 0,
) -> Path:
    """A saved adapter + manifest on `base_dir`, as training writes it (base spec and fingerprint,
    lora section, the training chat template, config.data.golden)."""
    quantization = qlora_quantization_config(torch.float32) if variant == "qlora" else None
    base = load_base(str(base_dir), quantization_config=quantization)
    # PEFT draws A from torch's global generator: seed it here, or an adapter depends on which
    # tests ran before (one order gave an adapter whose first greedy token is end-of-text)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = attach_lora(base.model, LoraSpec(r=r, variant=variant))  # type: ignore[arg-type]
    randomize_lora_b(model, seed=seed + 1, std=b_std)
    template = chat_template if chat_template is not None else base.chat_template
    manifest = valid_manifest(
        base.fingerprint,
        base={"spec": str(base_dir), "fingerprint": base.fingerprint, "dtype": "float32", "hub_id": None},
        config={"data": {"golden": str(golden) if golden else None}},
    )
    manifest["base"]["license"] = None
    manifest["lora"].update(variant=variant, r=r)
    manifest["chat_template"] = {"text": template, "sha256": hashlib.sha256(template.encode()).hexdigest()}
    return save_adapter(model, out, manifest)
