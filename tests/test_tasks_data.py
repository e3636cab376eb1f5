"""The bundled small tasks (examples/tasks/NAME): each generator rewrites its files byte for byte,
golden rows are about items train never mentions, and the gate reads every golden row."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from loraforge.data import read_records
from loraforge.data.types import Record
from loraforge.evaluate.checks import run_checks
from loraforge.evaluate.scoring import cases_from_records
from loraforge.recipe import DEFAULT_MAX_ROW_CHARS

TASKS_DIR = Path(__file__).parents[1] / "examples" / "tasks"
TASKS = sorted(path.parent.name for path in TASKS_DIR.glob("*/generate.py"))
GOLDEN_ROWS = 60
MAX_NEW_TOKENS = 48  # bench/task_baseline.py's generation budget


def generator(task: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"task_{task}", TASKS_DIR / task / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(task: str, name: str) -> list[Record]:
    path = TASKS_DIR / task / name
    return read_records(path, max_row_chars=DEFAULT_MAX_ROW_CHARS, golden=name == "golden.jsonl").records


def golden_only_pattern(task: str) -> re.Pattern[str]:
    names = "|".join(re.escape(s) for s in generator(task).GOLDEN_ONLY)
    return re.compile(rf"\b(?:{names})\b", re.IGNORECASE)


def text(record: Record) -> str:
    return "\n".join(m["content"] for m in record.messages)


def test_the_three_small_tasks_are_bundled() -> None:
    assert TASKS == ["field_extract", "sentiment_labels", "style_rewrite"]


@pytest.mark.parametrize("task", TASKS)
def test_generator_rewrites_the_bundled_files_byte_for_byte(task: str, tmp_path: Path) -> None:
    for hash_seed in ("0", "4242"):  # set iteration order must not leak into the rows
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, str(TASKS_DIR / task / "generate.py"), "--out", str(out)], env=env,
                       check=True, capture_output=True)  # fmt: skip
        for name in ("train.jsonl", "golden.jsonl"):
            assert (out / name).read_bytes() == (TASKS_DIR / task / name).read_bytes(), f"{task}/{name}"


@pytest.mark.parametrize("task", TASKS)
def test_no_train_row_mentions_a_golden_only_item(task: str) -> None:
    pattern = golden_only_pattern(task)
    leaks = [(r.id, m.group(0)) for r in read(task, "train.jsonl") if (m := pattern.search(text(r)))]
    assert leaks == []


@pytest.mark.parametrize("task", TASKS)
def test_every_golden_row_mentions_a_golden_only_item(task: str) -> None:
    pattern = golden_only_pattern(task)
    assert [r.id for r in read(task, "golden.jsonl") if not pattern.search(text(r))] == []


@pytest.mark.parametrize("task", TASKS)
def test_golden_rows_are_read_by_the_gate_with_two_slices_and_checks(task: str) -> None:
    cases = cases_from_records(read(task, "golden.jsonl"), MAX_NEW_TOKENS)
    assert len(cases) == GOLDEN_ROWS
    assert all(case.checks for case in cases)
    assert len({case.slice for case in cases}) == 2


@pytest.mark.parametrize("task", TASKS)
def test_each_golden_reference_passes_its_own_checks(task: str) -> None:
    cases = cases_from_records(read(task, "golden.jsonl"), MAX_NEW_TOKENS)
    failing = [c.id for c in cases if not all(o.passed for o in run_checks(c.checks, c.reference, c.reference))]
    assert failing == []


@pytest.mark.parametrize("task", TASKS)
def test_train_holds_a_few_hundred_rows_the_reader_accepts(task: str) -> None:
    assert 300 <= len(read(task, "train.jsonl")) <= 1000
