"""train.strength: the adapter's update scaled back toward the base until the selection probes hold,
baked into the saved weights (evaluate/strength.py, pipeline/evaluate_run.settle_adapter_strength)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from manifests import valid_manifest
from peft import PeftModel
from safetensors.torch import load_file
from test_eval_run import ANSWERS_NOTHING, QUESTIONS, SPEC, records, wrecking_adapter

from loraforge.cli import main
from loraforge.config import LoraSpec, validate_config
from loraforge.data.chat import resolve_chat_template
from loraforge.errors import EvalError, ModelError
from loraforge.evaluate.scoring import Case, cases_from_records
from loraforge.evaluate.strength import check_scales, choose_strength, scaled_adapter
from loraforge.files import sha256_file
from loraforge.models import attach_lora, load_base, read_manifest, save_adapter
from loraforge.models.adapter import ADAPTER_WEIGHTS, rescale_adapter
from loraforge.pipeline.evaluate_run import evaluate_run

PROMPT = torch.tensor([[5, 17, 42, 99, 7, 3]])


def _rows(questions: list[str], slice_name: str) -> list[dict[str, object]]:
    """Rows the tiny base passes: it answers nothing (tests/test_eval_run.py checks that)."""
    return [
        {
            "id": f"{slice_name}-{i}",
            "slice": slice_name,
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}],
            "checks": [ANSWERS_NOTHING],
        }
        for i, q in enumerate(questions)
    ]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    return _write(tmp_path / "golden.jsonl", _rows(QUESTIONS, "tickets"))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROMPT).logits


def _cases(golden: Path) -> list[Case]:
    return cases_from_records(records(golden), SPEC.max_new_tokens, probe=True)


def test_scaled_adapter_equals_scaling_b_and_restores_the_model(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base).eval()
    full = _logits(model)
    with scaled_adapter(model, 0.5):
        half = _logits(model)
    assert torch.equal(_logits(model), full)  # restored exactly
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    assert torch.allclose(half, _logits(model), atol=1e-6, rtol=0)
    assert not torch.allclose(half, full, atol=1e-3)


def test_rescaled_file_loads_as_the_scaled_adapter(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base).eval()
    adapter_dir = save_adapter(model, tmp_path / "adapter", valid_manifest(base.fingerprint))
    before = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    with scaled_adapter(model, 0.25):
        expected = _logits(model)
    rescale_adapter(adapter_dir, 0.25)
    after = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    assert before.keys() == after.keys() and any(".lora_B." in k for k in after)
    for key, tensor in after.items():
        assert torch.equal(tensor, before[key] * 0.25 if ".lora_B." in key else before[key]), key
    loaded = PeftModel.from_pretrained(load_base(str(tiny_base_dir)).model, str(adapter_dir)).eval()
    assert torch.allclose(_logits(loaded), expected, atol=1e-6, rtol=0)


def test_a_dora_adapter_is_not_rescaled(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    adapter_dir = save_adapter(
        attach_lora(base.model, LoraSpec(r=2, variant="dora")), tmp_path / "dora", valid_manifest(base.fingerprint)
    )
    before = (adapter_dir / ADAPTER_WEIGHTS).read_bytes()
    with pytest.raises(ModelError, match="DoRA"):
        rescale_adapter(adapter_dir, 0.5)
    assert (adapter_dir / ADAPTER_WEIGHTS).read_bytes() == before


def test_the_largest_scale_that_loses_nothing_is_kept(tiny_base_dir: Path, golden: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)
    trained = _logits(model.eval())
    model.train()
    template = resolve_chat_template(base.tokenizer)
    choice = choose_strength(base, model, SPEC, [1e-4, 1.0, 0.5], 0, template, cases=_cases(golden))
    assert choice.probes == len(QUESTIONS)  # the tiny base answers every row right (it answers nothing)
    tried = list(choice.lost)
    assert tried == [1.0, 0.5, 1e-4][: len(tried)]  # largest first, stopping at the first that holds
    assert choice.lost[1.0] == len(QUESTIONS)  # the wrecked update breaks every row
    assert choice.scale == tried[-1] and choice.lost[choice.scale] == 0 and choice.scale < 1.0
    assert all(choice.lost[s] > 0 for s in tried[:-1])
    assert model.training and torch.equal(_logits(model.eval()), trained)  # mode and scale restored


def test_without_a_scale_that_holds_the_fewest_lost_wins_and_ties_keep_the_larger(
    tiny_base_dir: Path, golden: Path
) -> None:
    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)
    template = resolve_chat_template(base.tokenizer)
    choice = choose_strength(base, model, SPEC, [1.0, 0.9], 0, template, cases=_cases(golden))
    assert choice.lost == {1.0: len(QUESTIONS), 0.9: len(QUESTIONS)} and choice.scale == 1.0
    lenient = choose_strength(base, model, SPEC, [1.0, 0.9], len(QUESTIONS), template, cases=_cases(golden))
    assert lenient.lost == {1.0: len(QUESTIONS)} and lenient.scale == 1.0  # within tolerance: one try


def test_a_base_that_knows_no_selection_probe_keeps_the_adapter_as_trained(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))  # the tiny base answers nothing: no bundled fact to lose
    choice = choose_strength(base, wrecking_adapter(base), SPEC, [1.0, 0.8], 0, resolve_chat_template(base.tokenizer))
    assert (choice.scale, choice.lost, choice.probes) == (1.0, {}, 0)


@pytest.mark.parametrize("scales", [[], [0.0, 0.5], [1.5]])
def test_scales_outside_the_unit_interval_are_refused(scales: list[float]) -> None:
    with pytest.raises(EvalError, match=r"train.strength.scales"):
        check_scales(scales)


SELECTION_QUESTIONS = ["what time is it", "tell me a joke", "is it raining", "name a colour"]


def _selection_file(tmp_path: Path) -> Path:
    """Selection rows the tiny base passes, none of them a golden question."""
    return _write(tmp_path / "selection.jsonl", _rows(SELECTION_QUESTIONS, "selection"))


def _setup(tmp_path: Path, base_dir: Path, golden: Path, scales: list[float], selection: Path | None = None):  # type: ignore[no-untyped-def]
    """A wrecked adapter saved with a manifest that froze `golden`, and the config that gates it."""
    base = load_base(str(base_dir))
    manifest = valid_manifest(base.fingerprint, golden_sha256=sha256_file(golden))
    adapter_dir = save_adapter(wrecking_adapter(base), tmp_path / "run" / "adapter", manifest)
    train = tmp_path / "train.jsonl"
    train.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}) + "\n"
    )
    raw = {
        "base": str(base_dir),
        "output": str(tmp_path / "run"),
        "data": {"train": str(train), "golden": str(golden), "replay": None},
        "train": {"strength": {"scales": scales, "probes": str(selection or _selection_file(tmp_path))}},
        "eval": {
            "probes": [],
            "max_new_tokens": SPEC.max_new_tokens,
            "batch_size": SPEC.batch_size,
            "precision": "fp32",
        },
    }
    return validate_config(raw, source="test"), adapter_dir


def test_after_training_the_chosen_strength_is_baked_in_once_and_gated(
    tiny_base_dir: Path, golden: Path, tmp_path: Path
) -> None:
    config, adapter_dir = _setup(tmp_path, tiny_base_dir, golden, [1.0, 1e-4])
    trained_b = {k: v for k, v in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items() if ".lora_B." in k}
    report = evaluate_run(config, adapter_dir, settle_strength=True)
    strength = read_manifest(adapter_dir)["strength"]  # type: ignore[index]
    assert strength["scale"] == 1e-4 and [t["scale"] for t in strength["tried"]] == [1.0, 1e-4]
    assert strength["tried"][0]["lost"] == len(SELECTION_QUESTIONS) and report.info["strength"] == strength
    scaled = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    assert all(torch.equal(scaled[k], v * 1e-4) for k, v in trained_b.items())
    assert report.verdict == "pass"  # the gate scored the rescaled adapter, not the wrecked one
    again = evaluate_run(config, adapter_dir, settle_strength=True)  # a resumed run goes straight to the gate
    assert again.info["strength"] == strength
    assert all(torch.equal(load_file(str(adapter_dir / ADAPTER_WEIGHTS))[k], scaled[k]) for k in scaled)


def test_scales_of_one_leave_the_adapter_and_manifest_alone(tiny_base_dir: Path, golden: Path, tmp_path: Path) -> None:
    config, adapter_dir = _setup(tmp_path, tiny_base_dir, golden, [1.0])
    before = (adapter_dir / ADAPTER_WEIGHTS).read_bytes()
    report = evaluate_run(config, adapter_dir, settle_strength=True)
    assert "strength" not in read_manifest(adapter_dir) and "strength" not in report.info  # type: ignore[operator]
    assert (adapter_dir / ADAPTER_WEIGHTS).read_bytes() == before and report.verdict == "block"


def test_loraforge_eval_gates_the_adapter_as_it_is(tiny_base_dir: Path, golden: Path, tmp_path: Path) -> None:
    config, adapter_dir = _setup(tmp_path, tiny_base_dir, golden, [1.0, 1e-4])
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    before = (adapter_dir / ADAPTER_WEIGHTS).read_bytes()
    assert main(["eval", str(config_path)]) == 3  # the wrecked adapter blocks: eval never rescales
    assert (adapter_dir / ADAPTER_WEIGHTS).read_bytes() == before and "strength" not in read_manifest(adapter_dir)  # type: ignore[operator]


def test_selection_rows_that_the_gate_also_asks_are_refused(tiny_base_dir: Path, golden: Path, tmp_path: Path) -> None:
    config, adapter_dir = _setup(tmp_path, tiny_base_dir, golden, [1.0, 0.5], selection=golden)
    before = (adapter_dir / ADAPTER_WEIGHTS).read_bytes()
    with pytest.raises(EvalError, match=r"golden.jsonl line 1.*disjoint from the exam"):
        evaluate_run(config, adapter_dir, settle_strength=True)
    assert "strength" not in read_manifest(adapter_dir)  # type: ignore[operator]
    assert (adapter_dir / ADAPTER_WEIGHTS).read_bytes() == before
