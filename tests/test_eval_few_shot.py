"""The prompting baseline (#24): few-shot example choice, the gate's few-shot column, its verdict
text, and `loraforge baseline` before training, whose answers the gate then reuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import valid_manifest

from loraforge.cli import main
from loraforge.config import EvalSpec, FewShotSpec, LoraSpec
from loraforge.data.types import Record
from loraforge.evaluate import run_gate
from loraforge.evaluate.few_shot import FEW_SHOT_ROLE, few_shot_cases
from loraforge.evaluate.gate import prompting_line
from loraforge.evaluate.scoring import Case, RowResult, slice_scores
from loraforge.models import attach_lora, load_base, load_tokenizer, save_adapter
from loraforge.models.generate import render_prompt

TRAIN = [
    ("my parcel never arrived at the house", "late_delivery"),
    ("I was charged twice for one order", "billing"),
    ("the desk arrived with a broken leg", "damaged"),
    ("where is my parcel, it is late", "late_delivery"),
    ("refund the double charge on my card", "billing"),
    ("hello there", "other"),
]


def _record(i: int, question: str, answer: str, system: str | None = None) -> Record:
    turns = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    return Record(Path("train.jsonl"), i + 1, "chat", tuple(turns))


def _case(question: str, system: str | None = None, max_new_tokens: int = 8, slice_: str = "tickets") -> Case:
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return Case(question[:8], slice_, "golden.jsonl line 1", tuple(prompt), "late_delivery", (), max_new_tokens)


def _users(case: Case) -> list[str]:
    return [m["content"] for m in case.prompt if m["role"] == "user"]


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir: Path) -> Any:
    return load_tokenizer(str(tiny_base_dir))


def test_nearest_examples_come_before_the_question_nearest_last(tokenizer: Any) -> None:
    train = [_record(i, q, a) for i, (q, a) in enumerate(TRAIN)]
    shots = few_shot_cases([_case("my parcel is late")], train, FewShotSpec(k=2), tokenizer, None, seed=0)
    users = _users(shots.cases[0])
    # both parcel rows share the most words; the one sharing "late" too is nearest, so it sits last
    assert users == ["my parcel never arrived at the house", "where is my parcel, it is late", "my parcel is late"]
    assert [m["role"] for m in shots.cases[0].prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert shots.cases[0].prompt[3]["content"] == "late_delivery"
    assert shots.examples == [2]


def test_the_golden_system_prompt_stays_first(tokenizer: Any) -> None:
    train = [_record(i, q, a, system="Label the ticket.") for i, (q, a) in enumerate(TRAIN)]
    shots = few_shot_cases(
        [_case("charged twice", system="Label it.")], train, FewShotSpec(k=3), tokenizer, None, seed=0
    )
    prompt = shots.cases[0].prompt
    assert prompt[0] == {"role": "system", "content": "Label it."}
    assert sum(m["role"] == "system" for m in prompt) == 1  # the examples' own system prompts are not copied
    assert _users(shots.cases[0])[-2] == "I was charged twice for one order"


def test_random_draws_the_same_rows_for_every_case_and_follows_the_seed(tokenizer: Any) -> None:
    train = [_record(i, q, a) for i, (q, a) in enumerate(TRAIN)]
    golden = [_case("my parcel is late"), _case("charged twice")]
    spec = FewShotSpec(k=3, select="random")
    first = few_shot_cases(golden, train, spec, tokenizer, None, seed=0)
    assert _users(first.cases[0])[:-1] == _users(first.cases[1])[:-1]
    again = few_shot_cases(golden, train, spec, tokenizer, None, seed=0)
    assert again.cases == first.cases
    seeds = {tuple(_users(few_shot_cases(golden, train, spec, tokenizer, None, seed=s).cases[0])) for s in range(6)}
    assert len(seeds) > 1


def test_examples_that_do_not_fit_are_dropped_farthest_first(tokenizer: Any) -> None:
    train = [_record(i, q, a) for i, (q, a) in enumerate(TRAIN)]
    case = _case("my parcel is late", max_new_tokens=8)
    full = few_shot_cases([case], train, FewShotSpec(k=2), tokenizer, None, seed=0)
    text = render_prompt(tokenizer, full.cases[0].prompt, None)
    full_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    tight = FewShotSpec(k=2, max_prompt_tokens=full_tokens + 8 - 1)
    fitted = few_shot_cases([case], train, tight, tokenizer, None, seed=0)
    assert fitted.examples == [1]
    assert _users(fitted.cases[0]) == ["where is my parcel, it is late", "my parcel is late"]  # the nearest stays
    none_fit = few_shot_cases([case], train, FewShotSpec(k=2, max_prompt_tokens=9), tokenizer, None, seed=0)
    assert none_fit.examples == [0] and none_fit.cases == [case]


def _scored(rows: list[tuple[bool, bool, bool]]) -> tuple[Any, list[RowResult]]:
    """Rows passed by (base, few_shot, adapter), scored as one target slice."""
    results = []
    for i, (base, shots, adapter) in enumerate(rows):
        row = RowResult(_case(f"q{i}"))
        row.passed = {"base": base, FEW_SHOT_ROLE: shots, "adapter": adapter}
        row.nll_sum = {"base": 1.0, FEW_SHOT_ROLE: 1.0, "adapter": 1.0}
        row.n_ref_tokens = 1
        results.append(row)
    return slice_scores(results, ["base", FEW_SHOT_ROLE, "adapter"])["tickets"], results


def test_prompting_line_says_who_wins_and_by_how_much() -> None:
    score, rows = _scored([(False, False, True)] * 9 + [(False, True, True)])
    line = prompting_line(score, rows)
    assert "the adapter beats prompting by 90.0% (+9 rows; McNemar p=0.00195, significant)" in line
    assert "adapter 100.0% (10/10) vs few-shot 10.0% (1/10), base 0.0% (0/10)" in line
    score, rows = _scored([(False, True, True)] * 2 + [(False, True, False)] * 3)
    assert "prompting beats the adapter by 60.0% (3 rows" in prompting_line(score, rows)
    score, rows = _scored([(False, True, False), (False, False, True)])
    assert "prompting does as well as the adapter" in prompting_line(score, rows)


def _golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    rows = [
        {"id": f"g-{i}", "slice": "tickets", "checks": [{"type": "regex", "pattern": "", "full_match": True}],
         "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]}
        for i, q in enumerate(["my parcel is late", "charged twice", "broken desk"])
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in TRAIN]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_gate_reports_a_few_shot_column_on_golden_slices_only(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    golden = [
        Record(Path("golden.jsonl"), i + 1, "chat", tuple(r["messages"]), id=r["id"], slice=r["slice"],
               checks=tuple(r["checks"]))
        for i, r in enumerate(json.loads(line) for line in _golden(tmp_path).read_text().splitlines())
    ]  # fmt: skip
    train = [_record(i, q, a) for i, (q, a) in enumerate(TRAIN)]
    spec = EvalSpec(probes=["general"], max_new_tokens=6, batch_size=4)
    model = attach_lora(base.model, LoraSpec(r=4, dropout=0.0))
    report = run_gate(base, model, golden, spec, tmp_path / "eval", examples=train)
    assert report.roles == ["base", FEW_SHOT_ROLE, "adapter"]
    assert FEW_SHOT_ROLE in report.slices["tickets"].passes
    assert FEW_SHOT_ROLE not in report.slices["general"].passes
    assert report.info["few_shot"]["mean_examples"] == 4.0
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    row = next(r for r in saved["rows"] if r["slice"] == "tickets")
    assert "my parcel never arrived" in row["prompts"][FEW_SHOT_ROLE] and FEW_SHOT_ROLE in row["outputs"]
    assert len(saved["prompting"]) == 1 and saved["prompting"][0].startswith("slice 'tickets': ")
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "## Fine-tuning vs prompting" in markdown and "| general (probe) |" in markdown
    off = run_gate(base, model, golden, spec.model_copy(update={"baselines": []}), tmp_path / "off", examples=train)
    assert off.roles == ["base", "adapter"] and off.prompting == []


def test_few_shot_never_blocks_even_when_it_beats_the_adapter() -> None:
    from loraforge.evaluate.gate import decide

    score, rows = _scored([(False, True, False)] * 10)
    decision = decide({"tickets": score}, rows, EvalSpec(probes=[]), ["base"])
    assert decision.verdict == "pass"


def _config(tmp_path: Path, base: Path) -> Path:
    raw = {
        "base": str(base),
        "output": str(tmp_path / "run"),
        "data": {"train": str(_train(tmp_path)), "golden": str(_golden(tmp_path)), "replay": None, "pii": "off"},
        "eval": {"probes": ["general"], "max_new_tokens": 6, "batch_size": 4, "precision": "fp32"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_baseline_command_before_training_then_the_gate_reuses_its_answers(
    tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    config = _config(tmp_path, tiny_base_dir)
    assert main(["baseline", str(config)]) == 0
    out = capsys.readouterr().out
    assert "prompting baseline" in out and "few-shot" in out and "slice 'tickets'" in out
    saved = json.loads((tmp_path / "run" / "baseline" / "report.json").read_text())
    assert saved["roles"] == ["base", FEW_SHOT_ROLE] and saved["cache"] == {"base": "miss", FEW_SHOT_ROLE: "miss"}
    assert list(saved["slices"]) == ["tickets"]  # golden slices only; the probes were answered for the cache
    assert (tmp_path / "run" / "baseline" / "report.html").read_text().startswith("<!DOCTYPE html>")
    # a trained adapter's gate on the same base and cases finds both halves cached
    base = load_base(str(tiny_base_dir))
    save_adapter(
        attach_lora(base.model, LoraSpec(r=4, dropout=0.0)),
        tmp_path / "run" / "adapter",
        valid_manifest(base.fingerprint),
    )
    assert main(["eval", str(config)]) == 0
    gate = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert gate["base_cache"] == "hit" and gate["roles"] == ["base", FEW_SHOT_ROLE, "adapter"]
    assert gate["few_shot"]["cache"] == "hit"


def test_baseline_without_a_golden_set_is_a_clear_error(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tiny_base_dir)
    raw = yaml.safe_load(config.read_text())
    del raw["data"]["golden"]
    config.write_text(yaml.safe_dump(raw))
    assert main(["baseline", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loraforge baseline needs data.golden" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "baseline").exists()
