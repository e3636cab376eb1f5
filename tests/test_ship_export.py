"""`loraforge export --for vllm`: refuses what vLLM's loader refuses, with the reason and the fix;
writes a clean adapter directory and the exact serve line otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from manifests import valid_manifest
from peft import LoraConfig, PeftModel, get_peft_model
from ship_adapters import make_adapter, randomize_lora_b
from tiny import LLAMA3_STYLE_TEMPLATE

from loraforge.cli import main
from loraforge.models import load_base, save_adapter
from loraforge.ship.export_vllm import (
    CHAT_TEMPLATE_FILE,
    EXPORT_RECORD_NAME,
    ExportRefused,
    export_for_vllm,
    module_problems,
    pick_max_lora_rank,
)
from loraforge.ship.vllm_run import vllm_python

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_adapter(base_dir: Path, out: Path, **lora: object) -> Path:
    """An adapter made by plain PEFT with the given LoraConfig fields, plus a manifest naming its base."""
    base = load_base(str(base_dir))
    settings = {"r": 4, "lora_alpha": 8, "target_modules": LLAMA_TARGETS, "task_type": "CAUSAL_LM", **lora}
    model = get_peft_model(base.model, LoraConfig(**settings))  # type: ignore[arg-type]
    randomize_lora_b(model)
    spec = {"spec": str(base_dir), "fingerprint": base.fingerprint, "dtype": "float32", "hub_id": None, "license": None}
    return save_adapter(model, out, valid_manifest(base.fingerprint, base=spec))


def _refusal(adapter: Path, out: Path, **kwargs: object) -> str:
    with pytest.raises(ExportRefused) as refused:
        export_for_vllm(adapter, out, check_with_vllm=False, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()
    return str(refused.value)


def test_dora_is_refused_with_the_reason_and_the_merge_fix(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "dora", variant="dora")
    message = _refusal(adapter, tmp_path / "out")
    assert "vLLM does not load DoRA adapters" in message
    assert "lora.variant=lora" in message and f"loraforge merge {adapter}" in message


def test_modules_to_save_is_refused(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(tiny_base_dir, tmp_path / "mts", modules_to_save=["norm"])
    assert "vLLM does not load modules_to_save ['norm']" in _refusal(adapter, tmp_path / "out")


def test_lora_bias_is_refused(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(tiny_base_dir, tmp_path / "bias", bias="lora_only")
    assert "vLLM does not load LoRA bias terms (bias='lora_only')" in _refusal(adapter, tmp_path / "out")


def test_rank_above_512_is_refused(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(tiny_base_dir, tmp_path / "r600", r=600, lora_alpha=600, target_modules=["q_proj"])
    assert "adapter rank 600 is above vLLM's largest max_lora_rank 512" in _refusal(adapter, tmp_path / "out")


def test_every_reason_is_listed_at_once(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "dora", variant="dora", r=16)
    message = _refusal(adapter, tmp_path / "out", max_lora_rank=8)
    assert "DoRA" in message and "adapter rank 16 is above max_lora_rank=8 (--max-lora-rank)" in message


def test_a_max_lora_rank_vllm_does_not_accept_is_refused(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "lora")
    message = _refusal(adapter, tmp_path / "out", max_lora_rank=24)
    assert "max_lora_rank=24 (--max-lora-rank): vLLM accepts only 1, 8, 16, 32, 64, 128, 256, 320, 512" in message


def test_the_smallest_allowed_max_lora_rank_that_fits_is_picked() -> None:
    assert pick_max_lora_rank(4, None) == (8, [])
    assert pick_max_lora_rank(16, None) == (16, [])
    assert pick_max_lora_rank(300, None) == (320, [])


def test_a_module_vllm_has_no_lora_layer_for_is_a_problem() -> None:
    problems, _ = module_problems("LlamaForCausalLM", ["q_proj", "rotary_emb"])
    assert len(problems) == 1 and "vLLM has no LoRA layer for rotary_emb on LlamaForCausalLM" in problems[0]


def test_plain_adapter_exports_a_clean_dir_and_the_exact_serve_line(tiny_base_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter", chat_template=LLAMA3_STYLE_TEMPLATE)
    (adapter / "stray.txt").write_text("not part of the adapter")
    out = tmp_path / "export"
    report = export_for_vllm(adapter, out, name="support", check_with_vllm=False)
    template = out.resolve() / CHAT_TEMPLATE_FILE
    assert report.serve_command == (
        f"vllm serve {tiny_base_dir.resolve()} --enable-lora --lora-modules support={out.resolve()} "
        f"--max-lora-rank 8 --chat-template {template}"
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "loraforge.json", CHAT_TEMPLATE_FILE, EXPORT_RECORD_NAME]
    )
    assert template.read_text() == LLAMA3_STYLE_TEMPLATE
    assert json.loads((out / EXPORT_RECORD_NAME).read_text())["serve_command"] == report.serve_command
    assert isinstance(PeftModel.from_pretrained(load_base(str(tiny_base_dir)).model, str(out)), PeftModel)


def test_cli_export_prints_the_serve_line(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "adapter")
    out = tmp_path / "export"
    code = main(["export", str(adapter), "--for", "vllm", "--out", str(out), "--name", "bot", "--no-vllm-check"])
    assert code == 0
    assert f"--enable-lora --lora-modules bot={out.resolve()} --max-lora-rank 8" in capsys.readouterr().out


def test_cli_export_of_dora_exits_2_with_the_reason(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = make_adapter(tiny_base_dir, tmp_path / "dora", variant="dora")
    code = main(["export", str(adapter), "--for", "vllm", "--out", str(tmp_path / "out"), "--no-vllm-check"])
    assert code == 2
    assert "vLLM does not load DoRA adapters" in capsys.readouterr().err


@pytest.mark.slow
def test_vllm_greedy_tokens_equal_loraforge_on_smollm2(tmp_path: Path) -> None:
    if vllm_python() is None:  # probed here, not at collection: importing vllm takes seconds
        pytest.skip("vLLM not installed (make setup-vllm, or set LORAFORGE_VLLM_PYTHON)")
    adapter = make_adapter("smollm2-135m-instruct", tmp_path / "adapter", r=16)
    report = export_for_vllm(adapter, tmp_path / "export")
    check = report.vllm_check
    assert check is not None and check.ran, check.reason if check else None
    assert check.equal, check.first_difference
