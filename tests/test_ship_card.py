"""The model card: generated from a real gated run's manifest, a Hugging Face card (YAML front
matter, no PEFT boilerplate) holding the gate's table; adapter_config.json names the public base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from manifests import valid_manifest
from peft import PeftModel
from ship_runs import SLICES, gated_run
from transformers import AutoModelForCausalLM

from loraforge.cli import main
from loraforge.config import LoraSpec
from loraforge.models import MANIFEST_NAME, attach_lora, load_adapter, load_base, public_base, save_adapter
from loraforge.pipeline.run import RunOutcome
from loraforge.ship.card import CARD_NAME, render_model_card

SMOLLM2 = "smollm2-135m-instruct"
BOILERPLATE = "[More Information Needed]"


@pytest.fixture(scope="module")
def outcome(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunOutcome:
    where = tmp_path_factory.getbasetemp() / "ship-run"
    where.mkdir(exist_ok=True)
    return gated_run(where, tiny_base_dir)


def _card(outcome: RunOutcome) -> str:
    return (outcome.train.adapter_dir / CARD_NAME).read_text(encoding="utf-8")


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    meta: dict[str, Any] = yaml.safe_load(card.split("---\n")[1])
    return meta


def _manifest(outcome: RunOutcome) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((outcome.train.adapter_dir / MANIFEST_NAME).read_text())
    return manifest


def _public(manifest: dict[str, Any]) -> dict[str, Any]:
    hub_id, license_id = public_base(SMOLLM2)
    return {**manifest, "base": {**manifest["base"], "spec": SMOLLM2, "hub_id": hub_id, "license": license_id}}


def test_the_card_renders_the_gates_table_rows_and_verdict(outcome: RunOutcome) -> None:
    card, gate = _card(outcome), outcome.gate
    assert gate is not None and f"Verdict: **{gate.verdict}**" in card
    for name in SLICES:
        score = gate.slices[name]
        adapter = f"{score.rate('adapter'):.1%} ({score.passes['adapter']}/{score.n})"
        base = f"{score.rate('base'):.1%} ({score.passes['base']}/{score.n})"
        assert f"| {name} | target | {score.n} | {base} | {adapter} |" in card


def test_the_card_is_what_the_completed_manifest_renders_to(outcome: RunOutcome) -> None:
    assert _card(outcome) == render_model_card(_manifest(outcome))


def test_the_front_matter_is_yaml_with_the_hugging_face_keys(outcome: RunOutcome) -> None:
    meta = _front_matter(_card(outcome))
    assert meta["library_name"] == "peft" and meta["tags"] == ["lora", "loraforge", "sft"]
    assert "base_model" not in meta and "license" not in meta  # a local base: no public id, no known license


def test_an_alias_base_is_named_by_its_hub_id_with_its_license(outcome: RunOutcome) -> None:
    card = render_model_card(_public(_manifest(outcome)))
    meta = _front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --lora-modules run=ADAPTER_DIR" in card
    assert "--max-lora-rank 8" in card  # r=4: the smallest rank vLLM accepts above it
    assert 'AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in card


def test_no_peft_boilerplate_is_left_anywhere(outcome: RunOutcome) -> None:
    assert BOILERPLATE not in _card(outcome)
    assert all(BOILERPLATE not in p.read_text(errors="ignore") for p in outcome.train.adapter_dir.iterdir())


def test_the_card_holds_the_lineage_and_what_hygiene_removed(outcome: RunOutcome) -> None:
    card, data = _card(outcome), _manifest(outcome)["data"]
    assert data["train_sha256"] in card and data["golden_sha256"] in card
    assert "| exact_duplicate | 1 | the same conversation as an earlier row |" in card
    assert "loraforge verify ADAPTER_DIR --pub PUB.pem" in card


def test_an_ungated_card_says_so(outcome: RunOutcome) -> None:
    card = render_model_card({**_manifest(outcome), "eval": None})
    assert "Not gated yet" in card and "Verdict:" not in card


def test_adapter_config_names_the_public_id_and_the_adapter_still_loads(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = attach_lora(base.model, LoraSpec(r=2))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # non-zero: the adapter must change the output
    model.eval()
    ids = torch.tensor([[1, 5, 9, 33, 70, 2]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    manifest = _public(valid_manifest(base.fingerprint))
    adapter_dir = save_adapter(model, tmp_path / "adapter", manifest)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)), str(adapter_dir))
    ours = load_adapter(load_base(str(tiny_base_dir)).model, adapter_dir, base.fingerprint)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.eval()(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_card_check_exits_1_on_a_stale_card_and_0_after_regenerating(outcome: RunOutcome, tmp_path: Path) -> None:
    copy = tmp_path / "adapter"
    shutil.copytree(outcome.train.adapter_dir, copy)
    assert main(["card", str(copy), "--check"]) == 0
    (copy / CARD_NAME).write_text("# edited by hand\n")
    assert main(["card", str(copy), "--check"]) == 1
    assert main(["card", str(copy)]) == 0
    assert (copy / CARD_NAME).read_text() == _card(outcome)


def test_card_of_an_adapter_without_a_manifest_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["card", str(tmp_path)]) == 2
    assert "no loraforge.json" in capsys.readouterr().err
