"""data.replay=builtin, the default forgetting guard: the base's own answers to bundled prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import save_tiny_base

from loraforge.config import DataSpec, validate_config
from loraforge.data.hygiene import shingles
from loraforge.data.records import read_records
from loraforge.errors import DataError
from loraforge.files import loraforge_home
from loraforge.models import load_tokenizer
from loraforge.models.fingerprint import base_fingerprint
from loraforge.pipeline.distill import read_prompts
from loraforge.pipeline.replay import PROMPTS, SHIPPED, cached_replay_path, resolve_replay
from loraforge.recipe import DEFAULT_NEAR_DUP_THRESHOLD

PROBES = Path(__file__).parents[1] / "src" / "loraforge" / "evaluate" / "probes"


def _probe_questions() -> list[str]:
    questions = []
    for path in (PROBES / "general.jsonl", PROBES / "safety.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            questions += [m["content"] for m in json.loads(line)["messages"] if m["role"] == "user"]
    return questions


def _jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / max(len(a | b), 1)


def test_replay_is_builtin_by_default() -> None:
    config = validate_config({"data": {"train": "t.jsonl"}}, check_files=False)
    assert config.data.replay == "builtin" and config.data.replay_ratio == 0.2


def test_replay_null_turns_the_guard_off() -> None:
    config = validate_config({"data": {"train": "t.jsonl", "replay": None}}, check_files=False)
    assert config.data.replay is None


def test_builtin_prompts_are_disjoint_from_the_gates_probes_near_duplicates_included() -> None:
    prompts = [p.messages[-1]["content"] for p in read_prompts(PROMPTS)]
    probes = _probe_questions()
    assert len(prompts) >= 150 and len(probes) >= 40
    # exact Jaccard on the data stage's word 5-grams; the closest pairs (0.5) are one template asking
    # another fact ("the chemical symbol for iron" / "... for water"), a sibling skill, not the answer
    probe_shingles = [shingles(q) for q in probes]
    closest = max(_jaccard(shingles(p), q) for p in prompts for q in probe_shingles)
    assert closest < DEFAULT_NEAR_DUP_THRESHOLD, f"a replay prompt near-duplicates a probe (Jaccard {closest:.2f})"
    assert not {p.strip().lower() for p in prompts} & {q.strip().lower() for q in probes}


def test_shipped_answers_are_training_rows_of_bundled_prompts() -> None:
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
    ids = {p.id for p in read_prompts(PROMPTS)}
    for name in shipped.values():
        rows = read_records(SHIPPED.parent / name, max_row_chars=200_000)
        assert len(rows.records) >= 50 and not rows.problems
        assert {r.id for r in rows.records} <= ids


def test_other_base_answers_the_prompts_once_and_is_cached(tmp_path: Path) -> None:
    tiny = save_tiny_base(tmp_path / "other-base", seed=1)  # other weights: conftest's seeded cache does not apply
    tokenizer = load_tokenizer(str(tiny))
    spec = DataSpec(train=tmp_path / "t.jsonl")
    two = tmp_path / "prompts.jsonl"
    two.write_text("".join(PROMPTS.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    resolved = resolve_replay(spec, str(tiny), tokenizer, prompts=two)
    cached = cached_replay_path(base_fingerprint(tiny, tokenizer.chat_template, loraforge_home() / "fingerprints"))
    assert cached.is_file() and cached.read_text() == ""  # a random base ends no turn: both prompts dropped
    assert resolved.replay is None  # so no replay rows, rather than an empty file the reader refuses
    stamp = cached.stat().st_mtime_ns
    again = resolve_replay(spec, str(tiny), tokenizer, prompts=two)
    assert again.replay is None and cached.stat().st_mtime_ns == stamp  # answered once, then cached
    assert cached_replay_path("sha256:" + "ab" * 32).name == "ab" * 16 + ".jsonl"


def test_unresolved_builtin_is_refused_by_the_data_stage(tiny_base_dir: Path, tmp_path: Path) -> None:
    from loraforge.data import prepare_data

    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="resolve_replay"):
        prepare_data(DataSpec(train=tmp_path / "t.jsonl"), load_tokenizer(str(tiny_base_dir)), seed=0,
                     context_length=256, out_dir=tmp_path / "out", cache_dir=None)  # fmt: skip
    assert not (tmp_path / "out").exists()
