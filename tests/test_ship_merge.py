"""`loraforge merge`: the merged model answers as the unmerged adapter does, loads with plain
transformers in the training chat template, and a merge beyond tolerance writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ship_adapters import make_adapter
from tiny import LLAMA3_STYLE_TEMPLATE
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraforge.cli import main
from loraforge.errors import ModelError
from loraforge.models import load_adapter, load_base
from loraforge.ship import merge
from loraforge.ship.adapter_source import BUILTIN_PROMPTS
from loraforge.ship.merge import MERGE_RECORD_NAME, MergeRefused, merge_adapter

CHEAP = {"max_prompts": 2, "greedy_tokens": 8}  # two prompts, eight tokens: the tiny base needs no more


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()  # type: ignore[no-any-return]


def test_merged_lora_logits_match_unmerged_and_greedy_is_equal(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    report = merge_adapter(adapter, tmp_path / "merged", greedy_tokens=8)
    assert report.passed and report.greedy_equal
    assert report.max_abs_logit_diff <= merge.FP32_LOGIT_TOLERANCE
    assert report.prompts_source == "built-in (no golden set)" and report.n_prompts == len(BUILTIN_PROMPTS)


def test_the_adapter_changes_the_output_so_the_check_is_not_vacuous(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    merge_adapter(adapter, tmp_path / "merged", **CHEAP)
    ids = torch.tensor([[5, 17, 40, 99, 3, 250]])
    plain = _logits(load_base(str(tiny_base_dir)).model, ids)
    merged = _logits(AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")), ids)
    unmerged = _logits(load_adapter(load_base(str(tiny_base_dir)).model, adapter), ids)
    assert (merged - plain).abs().max().item() > 100 * merge.FP32_LOGIT_TOLERANCE
    assert (merged - unmerged).abs().max().item() <= merge.FP32_LOGIT_TOLERANCE


def test_merged_dora_matches_unmerged_by_its_magnitude_rule(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "dora", variant="dora")
    report = merge_adapter(adapter, tmp_path / "merged", **CHEAP)
    assert report.variant == "dora" and report.passed
    ids = torch.tensor([[5, 17, 40, 99, 3, 250]])
    unmerged = _logits(load_adapter(load_base(str(tiny_base_dir)).model, adapter), ids)
    merged = _logits(AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")), ids)
    assert (merged - unmerged).abs().max().item() <= merge.FP32_LOGIT_TOLERANCE
    # DoRA's fold is not the plain LoRA fold W + s*B@A of the same weights: the magnitude rescales it
    layer = load_adapter(load_base(str(tiny_base_dir)).model, adapter).base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        plain_fold = layer.base_layer.weight + layer.scaling["default"] * (
            layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        )
    merged_weight = (
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).model.layers[0].self_attn.q_proj.weight
    )
    assert (merged_weight - plain_fold).abs().max().item() > 1e-4


def test_qlora_merges_into_the_dequantized_base_not_4bit_weights(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "qlora", variant="qlora")
    report = merge_adapter(adapter, tmp_path / "merged", **CHEAP)
    assert report.passed
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


def test_merged_dir_generates_with_plain_transformers_in_the_training_template(
    tiny_base_dir: Path, tmp_path: Path
) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter", chat_template=LLAMA3_STYLE_TEMPLATE)
    merge_adapter(adapter, tmp_path / "merged", "fp16", **CHEAP)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    assert model.dtype == torch.float16
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.startswith("<|begin_of_text|>") and "<|start_header_id|>assistant" in prompt
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_merge_record_holds_the_figures_and_adapter_hashes(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    report = merge_adapter(adapter, tmp_path / "merged", **CHEAP)
    record = json.loads((tmp_path / "merged" / MERGE_RECORD_NAME).read_text())
    assert record["max_abs_logit_diff"] == report.max_abs_logit_diff
    assert record["tolerance"] == merge.FP32_LOGIT_TOLERANCE and record["greedy_equal"] is True
    assert set(record["adapter_files_sha256"]) == {"adapter_config.json", "adapter_model.safetensors", "loraforge.json"}


def test_golden_prompts_are_used_when_the_manifest_names_them(tiny_base_dir: Path, tmp_path: Path) -> None:
    golden = tmp_path / "golden.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer"}]}
        for i in range(3)
    ]
    golden.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter", golden=golden)
    report = merge_adapter(adapter, tmp_path / "merged", **CHEAP)
    assert report.prompts_source == f"golden {golden}" and report.n_prompts == 2  # max_prompts=2 of its 3


def test_merge_beyond_tolerance_is_refused_and_writes_nothing(
    tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    # bf16 rounding really moves the logits; a tolerance far below that must refuse
    monkeypatch.setitem(merge.LOGIT_TOLERANCES, "bf16", 1e-9)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(MergeRefused) as refused:
        merge_adapter(adapter, out_parent / "merged", "bf16", **CHEAP)
    message = str(refused.value)
    assert "bf16 tolerance 1e-09" in message and "max |logit difference|" in message
    assert "--dtype fp32" in message and "nothing written" in message
    assert list(out_parent.iterdir()) == []


def test_an_unknown_dtype_names_the_argument_and_the_flag(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    with pytest.raises(ModelError, match=r"dtype='int8' \(--dtype\): use one of fp32, bf16, fp16"):
        merge_adapter(adapter, tmp_path / "merged", "int8", **CHEAP)


def test_cli_merge_prints_the_figures_and_where_it_wrote(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    assert main(["merge", str(adapter), str(tmp_path / "merged"), "--max-prompts", "2", "--greedy-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "max |logit difference|" in out and "tolerance 0.001, fp32" in out
    assert "greedy answers equal" in out and str(tmp_path / "merged") in out


def test_cli_merge_refusal_exits_2_with_the_figures(
    tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    monkeypatch.setitem(merge.LOGIT_TOLERANCES, "fp16", 1e-9)
    assert (
        main(
            [
                "merge",
                str(adapter),
                str(tmp_path / "merged"),
                "--dtype",
                "fp16",
                "--max-prompts",
                "2",
                "--greedy-tokens",
                "8",
            ]
        )
        == 2
    )
    assert "fp16 tolerance 1e-09" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_merge_on_smollm2_matches_the_unmerged_adapter(tmp_path: Path) -> None:
    adapter = make_adapter("smollm2-135m-instruct", tmp_path / "adapter", r=16)
    report = merge_adapter(adapter, tmp_path / "merged", max_prompts=4, greedy_tokens=16)
    assert report.passed and report.greedy_equal
    assert report.max_abs_logit_diff <= merge.FP32_LOGIT_TOLERANCE
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
