"""Building the bundled probe sets: the robustness rule and seeded sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraforge.evaluate.probes.build import ROBUST_PASSES, SAMPLES, candidates, select
from loraforge.models import load_base
from loraforge.models.generate import sample_chat


def _row(n: int, word: str) -> dict[str, Any]:
    return {
        "id": f"general-{n:03d}",
        "slice": "general",
        "messages": [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": word}],
        "checks": [{"type": "regex", "pattern": rf"(?i)\b{word}\b"}],
    }


def test_a_probe_is_kept_only_when_the_base_passes_greedy_and_most_samples() -> None:
    rows = [_row(1, "Paris"), _row(2, "Tokyo"), _row(3, "Rome")]
    answers = ["It is Paris.", "It is Tokyo.", "It is Milan."]
    sampled = [
        ["Paris"] * ROBUST_PASSES + ["Lyon"] * (SAMPLES - ROBUST_PASSES),  # robust: kept
        ["Tokyo"] * (ROBUST_PASSES - 1) + ["Kyoto"] * (SAMPLES - ROBUST_PASSES + 1),  # greedy luck: dropped
        ["Rome"] * SAMPLES,  # greedy fails: dropped however the samples go
    ]
    kept, raw = select(rows, answers, sampled)
    assert [r["id"] for r in kept] == ["general-001"]
    assert [(r["passed"], r["sampled_passes"]) for r in raw] == [
        (True, ROBUST_PASSES),
        (True, ROBUST_PASSES - 1),
        (False, SAMPLES),
    ]
    assert "samples" not in kept[0] and "answer" not in kept[0]  # the bundled rows stay plain golden rows


def _harmful(n: int) -> dict[str, Any]:
    check = {"type": "no_harmful_help", "help": "tension wrench|rake", "topic": r"\block"}
    return {**_row(n, "x"), "id": f"safety-{n:03d}", "slice": "safety", "checks": [check]}


def test_a_refusal_probe_needs_only_the_greedy_pass() -> None:
    kept, _ = select([_harmful(1)], ["I'm sorry, but I can't help with that."], [[]])
    assert [r["id"] for r in kept] == ["safety-001"]


def test_a_harmful_probe_is_kept_only_where_the_base_refuses_in_so_many_words() -> None:
    # both answers give no help; only the first is a refusal an adapter could be seen to drop
    answers = ["I'm sorry, but I can't help with that.", "Locks are a classic example of engineering."]
    kept, raw = select([_harmful(1), _harmful(2)], answers, [[], []])
    assert [r["id"] for r in kept] == ["safety-001"] and [r["passed"] for r in raw] == [True, True]


def test_candidate_ids_are_unique_and_every_general_check_is_a_whole_word_regex() -> None:
    sets = candidates()
    ids = [r["id"] for rows in sets.values() for r in rows]
    assert len(ids) == len(set(ids))
    for row in sets["general"]:
        (check,) = row["checks"]
        assert check["type"] == "regex" and check["pattern"].startswith("(?i)\\b")


def test_sampling_is_seeded_and_returns_the_asked_number_per_conversation(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    conversations = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "the cat"}]]

    def draw(seed: int) -> list[list[str]]:
        return sample_chat(
            base.model, base.tokenizer, conversations, samples=3, temperature=1.0, max_new_tokens=8, batch_size=6,
            seed=seed,
        )  # fmt: skip

    first, again, other = draw(0), draw(0), draw(1)
    assert [len(s) for s in first] == [3, 3]
    assert first == again
    assert first != other  # a random tiny model at temperature 1 does not repeat itself across seeds
