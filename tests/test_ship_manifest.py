"""The adapter manifest against its JSON Schema: a real run's validates; a broken one is refused on
load and on write, naming the file and the key path; docs/manifest.md is generated from the schema."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from manifests import valid_manifest
from ship_runs import SLICES, gated_run
from typer.testing import CliRunner

from loraforge.cli import app
from loraforge.config import LoraSpec
from loraforge.errors import ModelError
from loraforge.files import sha256_file
from loraforge.models import (
    MANIFEST_NAME,
    attach_lora,
    load_base,
    manifest_chat_template,
    read_manifest,
    save_adapter,
    tokenizer_sha256,
)
from loraforge.models.manifest import manifest_problems, manifest_schema
from loraforge.pipeline.run import RunOutcome

MANIFEST_MD = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"


@pytest.fixture(scope="module")
def outcome(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunOutcome:
    where = tmp_path_factory.getbasetemp() / "ship-run"
    where.mkdir(exist_ok=True)
    return gated_run(where, tiny_base_dir)


def _raw(adapter_dir: Path) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((adapter_dir / MANIFEST_NAME).read_text())
    return payload


def _broken_copy(adapter_dir: Path, tmp_path: Path, manifest: dict[str, Any]) -> Path:
    copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, copy)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    return copy


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(manifest_schema())


def test_a_real_runs_manifest_validates_and_holds_the_fixed_key_paths(outcome: RunOutcome, tiny_base_dir: Path) -> None:
    manifest = _raw(outcome.train.adapter_dir)
    assert manifest_problems(manifest) == []
    assert manifest["base"]["fingerprint"] == outcome.train.base_fingerprint
    assert manifest["base"]["spec"] == str(tiny_base_dir) and manifest["base"]["hub_id"] is None
    template = manifest["chat_template"]["text"]
    assert manifest["chat_template"]["sha256"] == hashlib.sha256(template.encode()).hexdigest()
    assert manifest["tokenizer"]["sha256"] == tokenizer_sha256(tiny_base_dir)
    config = outcome.train.config
    assert manifest["data"]["train_sha256"] == sha256_file(config.data.train)
    assert config.data.golden is not None and manifest["data"]["golden_sha256"] == sha256_file(config.data.golden)
    assert set(manifest["versions"]) >= {"python", "torch", "transformers", "peft", "loraforge"}
    assert manifest["seed"] == config.train.seed and manifest["config"]["lora"]["r"] == 4
    created = datetime.datetime.fromisoformat(manifest["created_at"])
    assert created.utcoffset() == datetime.timedelta(0)


def test_data_rows_count_after_hygiene_with_what_it_removed(outcome: RunOutcome) -> None:
    rows = _raw(outcome.train.adapter_dir)["data"]["rows"]
    assert rows["rows_in"] == 25 and rows["dropped"] == {"exact_duplicate": 1}
    assert rows["dedup"] == {"exact": 1, "near": 0}
    assert rows["train"] + rows["eval"] == 24 and rows["golden"] == 4
    assert rows["pii"]["mode"] == "off"


def test_training_records_steps_losses_and_throughput(outcome: RunOutcome) -> None:
    training = _raw(outcome.train.adapter_dir)["training"]
    result = outcome.train.result
    assert (training["final_step"], training["total_steps"], training["best_step"]) == (2, 2, result.best_step)
    assert training["eval_losses"] == [{"step": s, "loss": loss} for s, loss in result.eval_losses]
    assert training["tokens_per_second"] > 0 and training["wall_seconds"] > 0
    assert training["grad_accum"] >= 1 and training["resumed_from"] is None


def test_the_gate_fills_eval_with_its_verdict_and_slices(outcome: RunOutcome) -> None:
    evaluated = _raw(outcome.train.adapter_dir)["eval"]
    assert outcome.gate is not None and evaluated["verdict"] == outcome.gate.verdict
    assert set(evaluated["slices"]) == set(SLICES)


def test_the_schema_allows_eval_null_and_any_keys_under_config(outcome: RunOutcome) -> None:
    manifest = _raw(outcome.train.adapter_dir)
    manifest["eval"] = None
    manifest["config"]["anything"] = {"new": [1, 2]}
    assert manifest_problems(manifest) == []


def test_a_manifest_without_base_fingerprint_is_refused_on_load(outcome: RunOutcome, tmp_path: Path) -> None:
    manifest = _raw(outcome.train.adapter_dir)
    del manifest["base"]["fingerprint"]
    broken = _broken_copy(outcome.train.adapter_dir, tmp_path, manifest)
    with pytest.raises(ModelError, match=r"adapter/loraforge.json: manifest key 'base\.fingerprint'.*required"):
        read_manifest(broken)


def test_a_wrong_type_is_refused_on_load_naming_the_key_path(outcome: RunOutcome, tmp_path: Path) -> None:
    manifest = _raw(outcome.train.adapter_dir)
    manifest["data"]["rows"]["train"] = "many"
    broken = _broken_copy(outcome.train.adapter_dir, tmp_path, manifest)
    with pytest.raises(ModelError, match=str(broken / MANIFEST_NAME) + r": manifest key 'data\.rows\.train'"):
        read_manifest(broken)


def test_an_unknown_top_level_key_is_refused(outcome: RunOutcome) -> None:
    manifest = _raw(outcome.train.adapter_dir) | {"chat_template_sha256": "0" * 64}
    assert [key for key, _ in manifest_problems(manifest)] == ["(top level)"]


def test_save_refuses_an_invalid_manifest_and_writes_nothing(tiny_base_dir: Path, tmp_path: Path) -> None:
    model = attach_lora(load_base(str(tiny_base_dir)).model, LoraSpec(r=2))
    manifest = valid_manifest()
    manifest["training"]["eval_losses"] = [{"step": 1}]
    with pytest.raises(ModelError, match=r"manifest key 'training\.eval_losses\.0\.loss'"):
        save_adapter(model, tmp_path / "adapter", manifest)
    assert list(tmp_path.iterdir()) == []


def test_a_format_1_manifest_still_loads_with_its_template(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"format": 1, "base": {"fingerprint": "sha256:abc"}, "chat_template": "{{ x }}", "train": {}})
    )
    assert manifest_chat_template(read_manifest(tmp_path)) == "{{ x }}"


def test_a_format_1_manifest_without_a_fingerprint_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": 1, "base": {}}))
    with pytest.raises(ModelError, match=r"manifest key 'base\.fingerprint'"):
        read_manifest(tmp_path)


def test_docs_manifest_md_holds_the_field_table_generated_from_the_schema() -> None:
    result = CliRunner().invoke(app, ["docs", "manifest-fields"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| key path | type | meaning | written by |\n")
    assert result.output in MANIFEST_MD.read_text(encoding="utf-8"), (
        "docs/manifest.md is stale: paste the output of `loraforge docs manifest-fields` into its field table"
    )
