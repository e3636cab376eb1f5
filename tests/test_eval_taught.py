"""The gate's checks through real generation: a tiny base taught three fixed answers by `loraforge
train`, then gated with exact, json_fields and refusal checks that pass, fail and block.

The other end-to-end gate tests use a base that answers nothing and a `regex ""` check; here the
adapter's answers are real text the checks must read (an order line, a JSON object, a refusal).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from tiny import save_tiny_base

from loraforge.config import Config, validate_config
from loraforge.pipeline.evaluate_run import evaluate_run
from loraforge.pipeline.run import RunOutcome, train_and_gate

TEACHABLE_INIT = 0.2  # wide enough for logits an adapter can make confident (tests/tiny.py)

# The three things the adapter learns, each cued by the prompt's first word.
ORDER_ANSWER = "ORD-12345 shipped"
JSON_ANSWER = '{"a": 1, "ok": true}'
REFUSAL_ANSWER = "I can't help with that."
CUES = {"order": ORDER_ANSWER, "json": JSON_ANSWER, "hack": REFUSAL_ANSWER}
FILLER = "the a product refund damaged missing late item please help customer support desk espresso".split()


def _prompt(cue: str, rng: random.Random) -> str:
    return " ".join([cue, *rng.sample(FILLER, 6)])


def _row(i: int, cue: str, rng: random.Random, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": _prompt(cue, rng)}, {"role": "assistant", "content": CUES[cue]}]
    return {"id": f"{cue}-{i}", "messages": messages, **extra}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _golden(rng: random.Random, n: int = 4) -> list[dict[str, Any]]:
    checks = {"order": [{"type": "exact"}], "json": [{"type": "json_fields", "fields": ["a", "ok"]}]}
    checks["hack"] = [{"type": "refusal"}]
    slices = {"order": "exact", "json": "fields", "hack": "refuses"}
    return [
        _row(100 + i, cue, rng, slice=slices[cue], checks=checks[cue]) for cue in CUES for i in range(n)
    ]  # fmt: skip


def _config(tmp_path: Path, base: Path, golden: Path) -> Config:
    rng = random.Random(0)
    train = _write(tmp_path / "train.jsonl", [_row(i, cue, rng) for cue in CUES for i in range(24)])
    raw = {
        "base": str(base),
        "output": str(tmp_path / "run"),
        "data": {"train": str(train), "golden": str(golden), "pii": "off", "replay": None, "eval_fraction": 0.1},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {"epochs": 12, "lr": 1e-2, "micro_batch_size": 8, "grad_accum": 1, "precision": "fp32"},
        "eval": {"max_new_tokens": 16, "probes": [], "precision": "fp32"},
    }
    return validate_config(raw, source="test")


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunOutcome, Config, Path]:
    tmp_path = tmp_path_factory.mktemp("taught")
    base = save_tiny_base(tmp_path / "base", initializer_range=TEACHABLE_INIT)
    config = _config(tmp_path, base, _write(tmp_path / "golden.jsonl", _golden(random.Random(1))))
    return train_and_gate(config), config, tmp_path


def _outputs(report: Any, slice_name: str) -> list[str]:
    return [row.outputs["adapter"] for row in report.rows if row.case.slice == slice_name]


def test_the_taught_answers_pass_exact_json_fields_and_refusal_where_the_base_fails(
    taught: tuple[RunOutcome, Config, Path],
) -> None:
    outcome, _, _ = taught
    report = outcome.gate
    assert report is not None
    assert _outputs(report, "exact") == [ORDER_ANSWER] * 4
    assert all(json.loads(answer) == {"a": 1, "ok": True} for answer in _outputs(report, "fields"))
    for name in ("exact", "fields", "refuses"):
        assert report.slices[name].rate("base") == 0.0 and report.slices[name].rate("adapter") == 1.0
    assert report.verdict == "pass"


def test_a_wrong_reference_fails_its_check_with_the_field_named(taught: tuple[RunOutcome, Config, Path]) -> None:
    outcome, config, tmp_path = taught
    rng = random.Random(2)
    wrong = [
        {**_row(200, "order", rng, slice="exact", checks=[{"type": "exact"}])},
        {**_row(201, "json", rng, slice="fields", checks=[{"type": "json_fields", "fields": ["ok"]}])},
    ]
    wrong[0]["messages"][-1]["content"] = "ORD-99999 shipped"
    wrong[1]["messages"][-1]["content"] = '{"a": 1, "ok": false}'
    golden = _write(tmp_path / "wrong.jsonl", wrong)
    again = config.model_copy(update={"output": tmp_path / "wrong"})
    again.data = again.data.model_copy(update={"golden": golden})
    report = evaluate_run(again, adapter_dir=outcome.train.adapter_dir, allow_new_golden=True)
    exact_row, json_row = report.rows
    assert exact_row.outputs["adapter"] == ORDER_ANSWER and not exact_row.passed["adapter"]
    assert "ok=True (want False)" in " ".join(json_row.failures["adapter"])


def test_refusing_a_benign_request_blocks_the_slice_that_checks_it(taught: tuple[RunOutcome, Config, Path]) -> None:
    outcome, config, tmp_path = taught
    rng = random.Random(3)
    benign = [_row(300 + i, "hack", rng, slice="benign", checks=[{"type": "not_refusal"}]) for i in range(3)]
    golden = _write(tmp_path / "benign.jsonl", benign)
    again = config.model_copy(update={"output": tmp_path / "benign"})
    again.data = again.data.model_copy(update={"golden": golden})
    report = evaluate_run(again, adapter_dir=outcome.train.adapter_dir, allow_new_golden=True)
    assert _outputs(report, "benign") == [REFUSAL_ANSWER] * 3
    assert report.verdict == "block"
    assert any("slice 'benign'" in reason for reason in report.reasons)
