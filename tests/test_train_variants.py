"""Every lora.variant trains a few steps on the tiny model and its adapter round-trips through plain PEFT."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from manifests import TEST_FINGERPRINT, valid_manifest
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from train_rows import tiny_plan
from transformers import AutoModelForCausalLM, set_seed

from loraforge.config import LoraSpec, TrainSpec
from loraforge.models import attach_lora, load_base, read_manifest
from loraforge.models.base import quantized_device_map
from loraforge.train import (
    build_optimizer,
    evaluate_loss,
    export_adapter,
    qlora_quantization_config,
    save_initial_adapter,
    train,
)
from loraforge.train.loss import TokenLossSum

VARIANTS = ["lora", "dora", "rslora", "pissa", "loraplus", "qlora"]
SPEC = TrainSpec(lr=5e-3, warmup_ratio=0.0, micro_batch_size=4, grad_accum=1, max_steps=4, eval_every=0.3)


def _base_model(base_dir: Path, variant: str) -> torch.nn.Module:
    quantization = qlora_quantization_config(torch.float32) if variant == "qlora" else None
    return load_base(str(base_dir), quantization_config=quantization).model


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_and_its_adapter_loads_in_plain_peft(variant: str, tiny_base_dir: Path, tmp_path: Path) -> None:
    set_seed(0)
    model = attach_lora(_base_model(tiny_base_dir, variant), LoraSpec(r=4, alpha=8, dropout=0.0, variant=variant))
    initial = save_initial_adapter(model, tmp_path) if variant == "pissa" else None
    ratio = 16.0 if variant == "loraplus" else None
    plan = tiny_plan(tiny_base_dir, micro=4)
    before = evaluate_loss(TokenLossSum(model), plan, Accelerator())
    result = train(model, plan, SPEC, tmp_path / "run", identity={}, loraplus_lr_ratio=ratio)
    assert result.best_eval_loss < before
    adapter_dir = export_adapter(model, tmp_path / "adapter", valid_manifest(TEST_FINGERPRINT), initial)
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 44, 12]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float()
        # PiSSA changed the base weights in `model`; the exported adapter must load on the ORIGINAL base
        plain = PeftModel.from_pretrained(_plain_base(tiny_base_dir, variant), str(adapter_dir)).eval()
        got = plain(input_ids=ids).logits.float()
    # bitsandbytes' CPU inference kernel rounds the 4-bit block scales to bf16 on first use
    torch.testing.assert_close(got, expected, atol=1e-2 if variant == "qlora" else 2e-4, rtol=0)
    assert read_manifest(adapter_dir)["base"]["fingerprint"] == TEST_FINGERPRINT


def _plain_base(base_dir: Path, variant: str) -> torch.nn.Module:
    if variant == "qlora":
        return AutoModelForCausalLM.from_pretrained(
            str(base_dir), quantization_config=qlora_quantization_config(torch.float32)
        )
    return AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)


def test_a_4bit_base_is_loaded_onto_the_requested_cuda_device() -> None:
    """bitsandbytes refuses `.to()` on a 4-bit model, so the device goes in from_pretrained's device_map."""
    assert quantized_device_map("cuda:1") == {"": 1}
    assert quantized_device_map(torch.device("cuda", 0)) == {"": 0}


def test_a_4bit_base_asked_for_on_cpu_stays_there() -> None:
    assert quantized_device_map("cpu") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_base_weights_live_on_the_gpu(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir), device="cuda:0", quantization_config=qlora_quantization_config(torch.bfloat16))
    assert {p.device.type for p in base.model.parameters()} == {"cuda"}


def test_rslora_scales_updates_by_alpha_over_sqrt_r(tiny_base_dir: Path) -> None:
    """alpha=8, r=4: rsLoRA scales by 8/sqrt(4) = 4, plain LoRA by 8/4 = 2."""
    model = attach_lora(_base_model(tiny_base_dir, "rslora"), LoraSpec(r=4, alpha=8, variant="rslora"))
    scales = {m.scaling["default"] for m in model.modules() if isinstance(m, LoraLayer)}
    assert scales == {8 / math.sqrt(4)}


def test_qlora_base_is_stored_in_4bit_nf4(tiny_base_dir: Path) -> None:
    model = _base_model(tiny_base_dir, "qlora")
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit"
    assert q_proj.weight.quant_state.quant_type == "nf4"


def test_loraplus_gives_b_a_higher_learning_rate(tiny_base_dir: Path) -> None:
    model = attach_lora(_base_model(tiny_base_dir, "lora"), LoraSpec(r=4, variant="loraplus"))
    optimizer = build_optimizer(model, TrainSpec(lr=1e-4), loraplus_lr_ratio=16.0)
    b_ids = {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    lrs = {("B" if id(p) in b_ids else "A"): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs == {"A": 1e-4, "B": 1.6e-3}
