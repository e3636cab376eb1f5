"""`loraforge plan` parameter counts equal PEFT's, from config.json alone (meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
from manifests import valid_manifest
from peft import get_peft_model
from plan_shapes import LLAMA_3_70B, LLAMA_31_8B, config_only_dir

from loraforge.config import LoraSpec
from loraforge.errors import ModelError
from loraforge.models import attach_lora, build_lora_config, load_base, save_adapter
from loraforge.plan import build_meta_model, model_shape, trainable_by_module
from loraforge.plan.memory import ADAPTER_BYTES
from loraforge.plan.shapes import target_groups


def peft_counts(base: str, spec: LoraSpec) -> tuple[int, int]:
    model = build_meta_model(base)
    groups = target_groups(model_shape(base, model), spec.targets)
    config = build_lora_config(spec, [g.name for g in groups], model.config.num_hidden_layers)
    peft_model = get_peft_model(model, config)  # type: ignore[arg-type]
    return peft_model.get_nb_trainable_parameters()


def test_llama31_8b_r32_all_linear_is_83886080(tmp_path: Path) -> None:
    shape = model_shape(str(config_only_dir(tmp_path, LLAMA_31_8B)))
    assert sum(trainable_by_module(shape, LoraSpec(r=32)).values()) == 83_886_080


@pytest.mark.parametrize(
    ("config", "spec"),
    [
        (LLAMA_31_8B, LoraSpec(r=32)),
        (LLAMA_31_8B, LoraSpec(r=16, variant="dora")),
        (LLAMA_31_8B, LoraSpec(r=8, targets=["q_proj", "v_proj"])),
        (LLAMA_3_70B, LoraSpec(r=16)),
        (LLAMA_31_8B, LoraSpec(r=16, top_layers=8)),
    ],
    ids=["8b-r32", "8b-dora", "8b-qv", "70b-r16", "8b-top8"],
)
def test_trainable_and_total_equal_peft(tmp_path: Path, config: dict[str, object], spec: LoraSpec) -> None:
    base = str(config_only_dir(tmp_path, config))
    shape = model_shape(base)
    trainable = sum(trainable_by_module(shape, spec).values())
    assert (trainable, shape.total_params + trainable) == peft_counts(base, spec)


def test_tied_embeddings_count_once(tiny_base_dir: Path) -> None:
    shape = model_shape(str(tiny_base_dir))
    real = load_base(str(tiny_base_dir)).model
    assert shape.tied_embeddings and shape.total_params == sum(p.numel() for p in real.parameters())


def test_unknown_target_names_the_available_modules(tmp_path: Path) -> None:
    shape = model_shape(str(config_only_dir(tmp_path, LLAMA_31_8B)))
    with pytest.raises(ModelError, match="qkv_proj.*its linear modules are: q_proj"):
        trainable_by_module(shape, LoraSpec(targets=["qkv_proj"]))


def test_directory_without_config_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        model_shape(str(tmp_path))


def test_adapter_bytes_match_the_saved_safetensors(tiny_base_dir: Path, tmp_path: Path) -> None:
    spec = LoraSpec()
    base = load_base(str(tiny_base_dir))
    save_adapter(attach_lora(base.model, spec), tmp_path / "adapter", manifest=valid_manifest())
    saved = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    predicted = sum(trainable_by_module(model_shape(str(tiny_base_dir)), spec).values()) * ADAPTER_BYTES
    assert abs(saved - predicted) / predicted < 0.05  # the rest is the safetensors JSON header


@pytest.mark.slow
def test_default_config_count_equals_peft_on_the_real_smollm2(tmp_path: Path) -> None:
    from loraforge.recipe import DEFAULT_BASE

    spec = LoraSpec()
    shape = model_shape(DEFAULT_BASE)
    peft_model = attach_lora(load_base(DEFAULT_BASE).model, spec)
    trainable = sum(trainable_by_module(shape, spec).values())
    assert (trainable, shape.total_params + trainable) == peft_model.get_nb_trainable_parameters()
