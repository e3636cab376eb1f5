"""The bundled preference task (examples/support_replies): the generator rewrites its files byte for
byte, held-out prompts are not train prompts reworded, every chosen reply keeps the house style and
every rejected one breaks it in the way its `flaw` names, as the golden checks see it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from loraforge.data import read_records
from loraforge.data.hygiene import shingles
from loraforge.evaluate.checks import check_problems, run_checks
from loraforge.recipe import DEFAULT_MAX_ROW_CHARS

TASK_DIR = Path(__file__).parents[1] / "examples" / "support_replies"
FILES = ("train.jsonl", "eval.jsonl", "golden.jsonl")
NEAR_DUPLICATE = 0.85  # the data stage's near-duplicate threshold
ORDER_ID = re.compile(r"\b(?:ORD-\d{5}|AC\d{6})\b")

# The golden check each flaw kind must fail (index into the generator's style_checks).
FAILS_CHECK = {
    "rambling": 2,  # concise
    "rude": 3,  # polite
    "generic": 1,  # names the order or product
    "no_signoff": 0,
    "mangled_signoff": 0,
    "wrong_signoff": 0,
}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("support_replies_generate", TASK_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while the class is built
    spec.loader.exec_module(module)
    return module


GEN = generator()


def rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TASK_DIR / name).read_text(encoding="utf-8").splitlines()]


def user_text(row: dict[str, Any]) -> str:
    turns = row["prompt"] if "prompt" in row else row["messages"]
    return next(m["content"] for m in turns if m["role"] == "user")


def refs(row: dict[str, Any]) -> list[str]:
    """What a reply to the row's request may name: the order id and product the request mentions."""
    user = user_text(row)
    found = ORDER_ID.findall(user) + [p for p in GEN.PRODUCTS if re.search(rf"\b{re.escape(p)}\b", user)]
    assert len(found) == (2 if ORDER_ID.search(user) else 1), (row["id"], found)  # one product each
    return found


def failed(row: dict[str, Any], answer: str) -> list[int]:
    outcomes = run_checks(GEN.style_checks(refs(row)), answer, row["chosen"])
    return [index for index, outcome in enumerate(outcomes) if not outcome.passed]


PAIRS = rows("train.jsonl") + rows("eval.jsonl")


def test_generator_rewrites_the_bundled_files_byte_for_byte(tmp_path: Path) -> None:
    for hash_seed in ("0", "4242"):  # set iteration order must not leak into the rows
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, str(TASK_DIR / "generate.py"), "--out", str(out)], env=env,
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        for name in FILES:
            assert (out / name).read_bytes() == (TASK_DIR / name).read_bytes(), name
        assert not list(out.glob("*.tmp"))


def test_files_hold_the_counts_the_readme_names() -> None:
    assert len(rows("train.jsonl")) >= 600
    assert len(rows("eval.jsonl")) >= 120
    assert len(rows("golden.jsonl")) == 60


@pytest.mark.parametrize("name", ["train.jsonl", "eval.jsonl"])
def test_flaw_kinds_are_balanced(name: str) -> None:
    counts = Counter(row["flaw"] for row in rows(name))
    assert set(counts) == set(GEN.FLAWS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_ids_are_unique_across_the_three_files() -> None:
    ids = [row["id"] for name in FILES for row in rows(name)]
    assert len(ids) == len(set(ids))


def test_pairs_have_a_system_and_user_prompt_and_two_different_answers() -> None:
    for row in PAIRS:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"], row["id"]
        assert row["prompt"][0]["content"] == GEN.SYSTEM
        assert row["chosen"].strip() and row["rejected"].strip() and row["chosen"] != row["rejected"], row["id"]


def test_no_held_out_prompt_equals_a_train_or_other_held_out_prompt() -> None:
    train = {user_text(r) for r in rows("train.jsonl")}
    eval_users = [user_text(r) for r in rows("eval.jsonl")]
    golden_users = [user_text(r) for r in rows("golden.jsonl")]
    assert not train & set(eval_users)
    assert not train & set(golden_users)
    assert not set(eval_users) & set(golden_users)
    assert len(set(eval_users)) == len(eval_users) and len(set(golden_users)) == len(golden_users)


@pytest.mark.parametrize("name", ["eval.jsonl", "golden.jsonl"])
def test_no_held_out_name_or_order_id_occurs_in_train(name: str) -> None:
    train = "\n".join(user_text(r) for r in rows("train.jsonl"))
    held_out = [user_text(r) for r in rows(name)]
    names = GEN.EVAL_NAMES if name == "eval.jsonl" else GEN.GOLDEN_NAMES
    assert all(any(re.search(rf"\b{n}\b", user) for n in names) for user in held_out)
    assert [n for n in names if re.search(rf"\b{n}\b", train)] == []
    assert [o for user in held_out for o in ORDER_ID.findall(user) if o in train] == []


@pytest.mark.parametrize("name", ["eval.jsonl", "golden.jsonl"])
def test_held_out_prompts_are_not_near_duplicates_of_train(name: str) -> None:
    train = [shingles(user_text(r)) for r in rows("train.jsonl")]

    def closest(grams: set[bytes]) -> float:
        return max(len(grams & t) / len(grams | t) for t in train)

    close = [(r["id"], round(j, 3)) for r in rows(name) if (j := closest(shingles(user_text(r)))) >= NEAR_DUPLICATE]
    assert close == []


def test_every_chosen_reply_ends_with_the_sign_off_line() -> None:
    assert [r["id"] for r in PAIRS if not r["chosen"].endswith("\n" + GEN.SIGN_OFF)] == []


def test_no_rejected_reply_of_a_sign_off_kind_ends_with_the_sign_off_line() -> None:
    signed = [
        r["id"] for r in PAIRS if r["flaw"] in GEN.SIGNOFF_FLAWS and r["rejected"].rstrip().endswith(GEN.SIGN_OFF)
    ]
    assert signed == []


def test_golden_rows_read_as_golden_without_problems() -> None:
    result = read_records(TASK_DIR / "golden.jsonl", max_row_chars=DEFAULT_MAX_ROW_CHARS, golden=True)
    assert result.problems == [] and result.skipped == {}
    assert len(result.records) == 60
    assert {record.slice for record in result.records} == {GEN.GOLDEN_SLICE}
    for record in result.records:
        assert [m["role"] for m in record.messages] == ["system", "user", "assistant"]
        assert check_problems(record.checks, record.messages[-1]["content"], record.where) == []


def test_golden_checks_name_the_requests_order_id_or_product() -> None:
    for row in rows("golden.jsonl"):
        assert row["checks"] == GEN.style_checks(refs(row)), row["id"]


def test_each_golden_reference_passes_its_own_checks() -> None:
    for row in rows("golden.jsonl"):
        reference = row["messages"][-1]["content"]
        assert all(o.passed for o in run_checks(row["checks"], reference, reference)), row["id"]


def test_every_chosen_reply_passes_the_golden_style_checks() -> None:
    assert [(r["id"], failed(r, r["chosen"])) for r in PAIRS if failed(r, r["chosen"])] == []


@pytest.mark.parametrize("flaw", sorted(FAILS_CHECK))
def test_each_rejected_flaw_kind_fails_only_the_style_check_it_breaks(flaw: str) -> None:
    kind = [r for r in PAIRS if r["flaw"] == flaw]
    assert kind
    assert [(r["id"], failed(r, r["rejected"])) for r in kind if failed(r, r["rejected"]) != [FAILS_CHECK[flaw]]] == []


def test_the_generic_rejected_reply_names_no_product_or_order() -> None:
    generic = [r for r in PAIRS if r["flaw"] == "generic"]
    named = [
        r["id"] for r in generic if ORDER_ID.search(r["rejected"]) or any(p in r["rejected"] for p in GEN.PRODUCTS)
    ]
    assert named == []
