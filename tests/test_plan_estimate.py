"""`loraforge plan`: memory components, data-report tokens, time and cost, recommendation, CLI JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from plan_shapes import LLAMA_3_70B, LLAMA_31_8B, config_only_dir

from loraforge.cli import main
from loraforge.config import validate_config
from loraforge.plan import get_tier, model_shape, plan_run
from loraforge.plan.memory import StepShape, memory_breakdown, weight_bytes
from loraforge.plan.shapes import target_groups

JSON_KEYS = {
    "trainable_params",
    "total_params",
    "adapter_bytes",
    "memory",
    "tokens",
    "hours",
    "cost_usd",
    "method",
    "tier",
}


def make_config(tmp_path: Path, base: Path | str, **sections: dict[str, object]):  # type: ignore[no-untyped-def]
    raw = {"base": str(base), "output": str(tmp_path / "run"), "data": {"train": str(tmp_path / "train.jsonl")}}
    raw.update(sections)
    return validate_config(raw, check_files=False)


def write_report(tmp_path: Path, tokens: int, loss_tokens: int, max_seq_len: int) -> None:
    report = {"tokens": {"train": tokens, "train_loss": loss_tokens}, "max_seq_len": max_seq_len,
              "split": {"train": 2000, "eval": 200}, "packing_efficiency": 0.9}  # fmt: skip
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "data_report.json").write_text(json.dumps(report))


def test_memory_total_is_the_sum_of_its_components(tmp_path: Path) -> None:
    plan = plan_run(make_config(tmp_path, config_only_dir(tmp_path, LLAMA_31_8B)), get_tier("H100"), tokens=10**6)
    parts = {k: v for k, v in plan.memory.items() if k != "total"}
    assert plan.memory["total"] == sum(parts.values()) and min(parts.values()) > 0


def test_data_report_gives_tokens_sequence_length_and_loss_share(tmp_path: Path, tiny_base_dir: Path) -> None:
    write_report(tmp_path, tokens=123_456, loss_tokens=61_728, max_seq_len=256)
    plan = plan_run(make_config(tmp_path, tiny_base_dir), get_tier("A10G"))
    assert (plan.tokens, plan.step.seq_len, plan.step.loss_fraction) == (123_456, 256, 0.5)
    assert not plan.assumptions


def test_without_a_report_the_assumptions_are_listed(tmp_path: Path, tiny_base_dir: Path) -> None:
    plan = plan_run(make_config(tmp_path, tiny_base_dir), get_tier("A10G"), tokens=5000)
    assert plan.tokens == 5000 and any("prepare" in note for note in plan.assumptions)


def test_cost_is_hours_times_gpus_times_the_price(tmp_path: Path) -> None:
    config = make_config(tmp_path, config_only_dir(tmp_path, LLAMA_31_8B))
    plan = plan_run(config, get_tier("A100-80", usd_per_hour=3.0), tokens=10**7)
    assert plan.hours is not None and plan.hours > 0
    assert plan.cost_usd == pytest.approx(plan.hours * plan.gpus * 3.0)


def test_more_epochs_take_proportionally_longer(tmp_path: Path, tiny_base_dir: Path) -> None:
    one = plan_run(make_config(tmp_path, tiny_base_dir, train={"epochs": 1}), get_tier("L4"), tokens=10**6)
    three = plan_run(make_config(tmp_path, tiny_base_dir, train={"epochs": 3}), get_tier("L4"), tokens=10**6)
    assert three.hours == pytest.approx(3 * one.hours)  # type: ignore[operator]


def test_gradient_checkpointing_shrinks_activations(tmp_path: Path) -> None:
    plan = plan_run(make_config(tmp_path, config_only_dir(tmp_path, LLAMA_31_8B)), get_tier("H100"), tokens=1)
    assert plan.activations_by_checkpointing["on"] < plan.activations_by_checkpointing["off"] / 4


def test_largest_micro_batch_fits_and_one_more_does_not(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, config_only_dir(tmp_path, LLAMA_31_8B), data={"train": "t.jsonl", "max_seq_len": 2048}
    )
    plan = plan_run(config, get_tier("H100"), tokens=1)
    best = plan.max_micro_batch
    assert best >= 1
    fits = plan_run(config.model_copy(update={"train": config.train.model_copy(update={"micro_batch_size": best})}),
                    get_tier("H100"), tokens=1)  # fmt: skip
    over = plan_run(config.model_copy(update={"train": config.train.model_copy(update={"micro_batch_size": best + 1})}),
                    get_tier("H100"), tokens=1)  # fmt: skip
    assert fits.fits and not over.fits


def test_nf4_weights_take_under_half_of_bf16(tmp_path: Path) -> None:
    shape = model_shape(str(config_only_dir(tmp_path, LLAMA_31_8B)))
    assert weight_bytes(shape, "nf4") < weight_bytes(shape, "bf16") / 2  # embeddings and head stay bf16


def test_dropout_mask_is_one_byte_on_gpu_for_peft_and_everywhere_for_the_fused_layers(tmp_path: Path) -> None:
    shape = model_shape(str(config_only_dir(tmp_path, LLAMA_31_8B)))
    groups = target_groups(shape, "all-linear")
    # DoRA runs PEFT's forward: CPU dropout keeps a mask in the input dtype, CUDA's fused kernel a bool
    cpu = StepShape("bf16", 1, 512, 1.0, 0.05, False, False, False, 16, "dora")
    gpu = replace(cpu, on_gpu=True)
    peft_gpu, peft_cpu = (memory_breakdown(shape, groups, 0, step)["activations"] for step in (gpu, cpu))
    assert peft_gpu < peft_cpu
    # plain LoRA runs the fused layers, which keep a bool mask on any device
    fused_cpu = replace(cpu, variant="lora")
    fused_gpu = replace(fused_cpu, on_gpu=True)
    fused = [memory_breakdown(shape, groups, 0, step)["activations"] for step in (fused_cpu, fused_gpu)]
    assert fused[0] == fused[1] < peft_gpu


def test_70b_in_bf16_is_sent_to_fsdp_not_qlora(tmp_path: Path) -> None:
    """A 4-bit 70B base would fit one 80 GB GPU, but QLoRA is not yet verified on a GPU."""
    plan = plan_run(make_config(tmp_path, config_only_dir(tmp_path, LLAMA_3_70B)), get_tier("H100"), tokens=10**6)
    assert not plan.fits and "FSDP" in plan.recommendation.tier
    assert plan.recommendation.method == "lora" and "lora.variant" not in plan.recommendation.config_keys


def test_small_base_is_sent_to_a_consumer_gpu(tmp_path: Path, tiny_base_dir: Path) -> None:
    plan = plan_run(make_config(tmp_path, tiny_base_dir), get_tier("RTX4090"), tokens=1000)
    assert plan.recommendation.tier.startswith("single consumer") and plan.recommendation.method == "lora"


def test_plan_json_holds_the_documented_keys(
    tmp_path: Path, tiny_base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "run.yaml"
    config_path.write_text(f"base: {tiny_base_dir}\noutput: {tmp_path / 'run'}\ndata:\n  train: missing.jsonl\n")
    assert main(["plan", str(config_path), "--gpu", "L4", "--tokens", "100000", "--json", "--set", "lora.r=8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert JSON_KEYS <= doc.keys() and "total" in doc["memory"] and doc["tokens"] == 100_000


def test_plan_table_prints_counts_memory_and_cost(
    tmp_path: Path, tiny_base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "run.yaml"
    config_path.write_text(f"base: {tiny_base_dir}\noutput: {tmp_path / 'run'}\ndata:\n  train: missing.jsonl\n")
    assert main(["plan", str(config_path), "--tokens", "100000"]) == 0
    out = capsys.readouterr().out
    assert "trainable params" in out and "total" in out and "time/cost" in out and "recommended" in out


def test_unknown_gpu_tier_exits_2_with_the_choices(
    tmp_path: Path, tiny_base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "run.yaml"
    config_path.write_text(f"base: {tiny_base_dir}\ndata:\n  train: missing.jsonl\n")
    assert main(["plan", str(config_path), "--gpu", "TPU"]) == 2
    assert "H100" in capsys.readouterr().err


def test_more_top_layers_than_the_base_has_is_refused_as_training_refuses_it(tmp_path: Path) -> None:
    from loraforge.errors import ConfigError

    base = config_only_dir(tmp_path, LLAMA_31_8B)  # 32 decoder layers
    assert plan_run(make_config(tmp_path, base, lora={"top_layers": 32}), get_tier("H100"), tokens=1).trainable_params
    with pytest.raises(ConfigError, match="top_layers=33: the base has only 32 decoder layers"):
        plan_run(make_config(tmp_path, base, lora={"top_layers": 33}), get_tier("H100"), tokens=1)
