from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
import torch
from manifests import TEST_FINGERPRINT, valid_manifest
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from loraforge.config import LoraSpec
from loraforge.errors import ModelError
from loraforge.models import (
    attach_lora,
    load_adapter,
    load_base,
    read_manifest,
    resolve_targets,
    save_adapter,
)
from loraforge.models.base import gguf_base_dir

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _nonzero_b(model: torch.nn.Module) -> None:
    """A fresh adapter is a no-op (B=0); make it change the output on purpose."""
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)


def test_all_linear_resolves_to_the_seven_llama_projections(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    assert resolve_targets(base.model, "all-linear") == ALL_LINEAR


def test_unknown_target_lists_the_real_linear_names(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    with pytest.raises(ModelError, match="qkv_proj match no linear module.*q_proj, k_proj"):
        resolve_targets(base.model, ["qkv_proj"])


def test_fingerprint_is_stable_across_loads(tiny_base_dir: Path, tmp_path: Path) -> None:
    """Recomputed from the files, not read back from the fingerprint cache the first load wrote."""
    first = load_base(str(tiny_base_dir), home=tmp_path).fingerprint
    assert list((tmp_path / "fingerprints").iterdir())
    shutil.rmtree(tmp_path / "fingerprints")
    assert load_base(str(tiny_base_dir), home=tmp_path).fingerprint == first


def test_fingerprint_is_the_same_in_bf16_and_fp32(tiny_base_dir: Path, tmp_path: Path) -> None:
    first = load_base(str(tiny_base_dir), dtype=torch.float32, home=tmp_path).fingerprint
    shutil.rmtree(tmp_path / "fingerprints")
    assert load_base(str(tiny_base_dir), dtype=torch.bfloat16, home=tmp_path).fingerprint == first


def test_fingerprint_changes_with_the_chat_template(tiny_base_dir: Path, tiny_llama3_dir: Path) -> None:
    assert load_base(str(tiny_base_dir)).fingerprint != load_base(str(tiny_llama3_dir)).fingerprint


def test_fingerprint_changes_with_the_weights(tiny_base_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base_dir, copy)
    model = AutoModelForCausalLM.from_pretrained(str(copy))
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0
    model.save_pretrained(str(copy))
    assert load_base(str(copy)).fingerprint != load_base(str(tiny_base_dir)).fingerprint


def test_attach_counts_equal_peft(tiny_base_dir: Path) -> None:
    ours = attach_lora(load_base(str(tiny_base_dir)).model, LoraSpec())
    theirs = get_peft_model(
        load_base(str(tiny_base_dir)).model,
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_top_layers_adapts_the_last_layers_and_backward_stops_below_them(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    n_layers = base.model.config.num_hidden_layers
    assert n_layers >= 2
    model = attach_lora(base.model, LoraSpec(top_layers=1))
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, _ in model.named_parameters() if "lora_" in name}
    assert adapted == {n_layers - 1}
    _nonzero_b(model)
    needs_grad: list[bool] = []
    for layer in model.get_base_model().model.layers:
        layer.register_forward_hook(lambda _m, _i, out: needs_grad.append(out[0].requires_grad))
    model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()
    # autograd records nothing below the adapted layer, so backward never runs through those layers
    assert needs_grad == [False] * (n_layers - 1) + [True]
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    with pytest.raises(ModelError, match="only 2 decoder layers" if n_layers == 2 else "decoder layers"):
        attach_lora(load_base(str(tiny_base_dir)).model, LoraSpec(top_layers=n_layers + 1))


def test_adapter_round_trips_through_plain_peft(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = attach_lora(base.model, LoraSpec())
    _nonzero_b(model)
    model.eval()
    ids = torch.tensor([[1, 5, 9, 33, 70, 2]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    adapter_dir = save_adapter(model, tmp_path / "adapter", valid_manifest(base.fingerprint))
    plain_base = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), dtype=torch.float32)
    plain = PeftModel.from_pretrained(plain_base, str(adapter_dir)).eval()
    with torch.no_grad():
        got = plain(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir))(input_ids=ids).logits
    assert not torch.allclose(got, base_logits, atol=1e-4)  # the adapter really is in the path
    assert read_manifest(adapter_dir)["base"]["fingerprint"] == base.fingerprint


def test_plain_peft_adapter_loads_in_loraforge(tiny_base_dir: Path, tmp_path: Path) -> None:
    plain = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    _nonzero_b(plain)
    plain.eval()
    plain.save_pretrained(str(tmp_path / "plain"))
    ids = torch.tensor([[1, 7, 8, 9]])
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
    base = load_base(str(tiny_base_dir))
    loaded = load_adapter(base.model, tmp_path / "plain", base_fingerprint=base.fingerprint).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_adapter_for_another_base_is_refused_with_both_fingerprints(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = attach_lora(base.model, LoraSpec(r=2))
    save_adapter(model, tmp_path / "a", valid_manifest(TEST_FINGERPRINT))
    fresh = load_base(str(tiny_base_dir))
    with pytest.raises(ModelError, match=TEST_FINGERPRINT + ".*" + fresh.fingerprint[:20]):
        load_adapter(fresh.model, tmp_path / "a", base_fingerprint=fresh.fingerprint)


def test_save_replaces_an_existing_adapter_whole(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = attach_lora(base.model, LoraSpec(r=2))
    target = tmp_path / "adapter"
    save_adapter(model, target, valid_manifest(seed=1))
    save_adapter(model, target, valid_manifest(seed=2))
    assert read_manifest(target)["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_unknown_base_spec_names_the_options() -> None:
    with pytest.raises(ModelError, match="not an alias .*smollm2-135m-instruct"):
        load_base("no-such-model")


def test_a_single_module_name_string_is_a_model_error_naming_the_argument(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    with pytest.raises(ModelError) as info:
        resolve_targets(base.model, "q_proj")
    assert "targets=" in str(info.value) and "lora.targets" in str(info.value) and "['q_proj']" in str(info.value)


def test_library_code_has_no_assert_statements() -> None:
    """`python -O` strips asserts, and an AssertionError names no file and no fix: the library raises
    LoraforgeError kinds instead."""
    src = Path(__file__).resolve().parents[1] / "src" / "loraforge"
    found = [
        f"{path.relative_to(src)}:{node.lineno}"
        for path in sorted(src.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == []


def _rewrite_one_byte(path: Path, offset: int, keep_mtime: bool) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    with path.open("r+b") as handle:  # in place: same inode, same size
        handle.write(data)
    mtime_ns = stat.st_mtime_ns if keep_mtime else stat.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stat.st_atime_ns, mtime_ns))


def test_a_gguf_changed_at_the_same_size_gets_a_new_converted_dir(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(4096))
    first = gguf_base_dir(gguf, tmp_path / "bases", "m")
    _rewrite_one_byte(gguf, 2000, keep_mtime=False)
    assert gguf.stat().st_size == 4100
    assert gguf_base_dir(gguf, tmp_path / "bases", "m") != first


def test_a_gguf_is_hashed_once_per_inode_size_and_mtime(tmp_path: Path) -> None:
    """The second lookup reads the remembered hash: bytes changed behind an unchanged stat go unseen."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(4096))
    first = gguf_base_dir(gguf, tmp_path / "bases", "m")
    _rewrite_one_byte(gguf, 2000, keep_mtime=True)
    assert gguf_base_dir(gguf, tmp_path / "bases", "m") == first
