"""The bundled selection probes (train.strength) stay off the exam: disjoint from the gate's probes
and from the replay prompts, near-duplicates included, and rebuilt only from build.py's candidates."""

from __future__ import annotations

import json

from loraforge.config import validate_config
from loraforge.data.hygiene import shingles
from loraforge.evaluate.probes import load_probes, probe_path
from loraforge.evaluate.probes.build import candidates
from loraforge.evaluate.strength import SELECTION_PROBES, selection_cases
from loraforge.pipeline.distill import read_prompts
from loraforge.pipeline.replay import PROMPTS
from loraforge.recipe import DEFAULT_NEAR_DUP_THRESHOLD


def _questions(names: list[str]) -> list[str]:
    return [m["content"] for r in load_probes(names) for m in r.messages if m["role"] == "user"]


def _closest(questions: list[str], others: list[str]) -> float:
    grams = [shingles(q) for q in others]
    return max(len(shingles(q) & g) / max(len(shingles(q) | g), 1) for q in questions for g in grams)


def test_selection_probes_are_neither_gate_probes_nor_replay_prompts() -> None:
    selection = _questions([SELECTION_PROBES])
    gate = _questions(["general", "safety"])
    replay = [p.messages[-1]["content"] for p in read_prompts(PROMPTS)]
    assert len(selection) >= 20
    for others in (gate, replay):
        assert not {q.lower().strip() for q in selection} & {q.lower().strip() for q in others}
        closest = _closest(selection, others)
        assert closest < DEFAULT_NEAR_DUP_THRESHOLD, f"a selection probe near-duplicates another set ({closest:.2f})"


def test_selection_rows_are_build_candidates_with_knowledge_checks() -> None:
    bundled = [json.loads(line) for line in probe_path(SELECTION_PROBES).read_text(encoding="utf-8").splitlines()]
    written = {row["id"]: row for row in candidates()[SELECTION_PROBES]}
    assert all(written[row["id"]] == row for row in bundled)  # kept rows, unedited
    assert len({row["id"] for row in bundled}) == len(bundled)
    assert {row["checks"][0]["type"] for row in bundled} == {"regex"}
    assert len(selection_cases()) == len(bundled)


def test_selection_is_not_a_gate_probe_set_and_strength_is_on_by_default() -> None:
    config = validate_config({"data": {"train": "t.jsonl"}}, check_files=False)
    assert SELECTION_PROBES not in config.eval.probes
    assert config.train.strength.scales == [1.0, 0.9, 0.8] and config.train.strength.tolerance == 0
    assert config.train.strength.probes is None
