"""What the generators under examples/tasks share: row shapes, the writer, the command line.

Standard library only. Each task's generate.py builds its rows from one seeded random.Random
and hands them to `main`, which writes train.jsonl and golden.jsonl (next to the script, or
under --out) and prints a short summary.

A generator also names GOLDEN_ONLY: the entity strings (products, names, cities, phrases)
that only golden rows draw from. tests/test_tasks_data.py checks that no train row mentions
one and that every golden row does, which is what keeps golden disjoint from train by item,
not only by wording.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]
GOLDEN_PER_SLICE = 30  # two slices of 30: 60 golden rows, the size each task's README describes
EXACT: list[Row] = [{"type": "exact"}]  # every task's answer is one fixed string
Build = Callable[[random.Random], tuple[list[Row], list[Row]]]
Draw = Callable[[random.Random], tuple[str, str]]  # one (user text, answer) pair


def row(row_id: str, system: str, user: str, answer: str) -> Row:
    return {
        "id": row_id,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
    }


def golden(row_id: str, system: str, user: str, answer: str, slice_name: str, checks: list[Row]) -> Row:
    return {**row(row_id, system, user, answer), "slice": slice_name, "checks": checks}


def balanced(rng: random.Random, values: Sequence[Any], n: int) -> list[Any]:
    """n values, as even across `values` as n allows, in a seeded random order."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def distinct(rng: random.Random, draw: Draw, seen: set[str]) -> tuple[str, str]:
    """A (user, answer) pair from `draw` whose user text no earlier row has (train and golden alike)."""
    for _ in range(1000):
        user, answer = draw(rng)
        if user not in seen:
            seen.add(user)
            return user, answer
    raise RuntimeError("1000 draws in a row repeated an earlier row; the templates are too few for the row count")


def assemble(
    rng: random.Random,
    system: str,
    train_draws: Sequence[Draw],
    golden_draws: Sequence[tuple[str, Draw]],
    checks: list[Row],
) -> tuple[list[Row], list[Row]]:
    """Train rows t-0001... from `train_draws`, then golden rows g-0001... from (slice, draw) pairs,
    drawn in that order from `rng`; no user text occurs twice across both files."""
    seen: set[str] = set()
    train = [row(f"t-{i:04d}", system, *distinct(rng, draw, seen)) for i, draw in enumerate(train_draws, 1)]
    golden_rows = [
        golden(f"g-{i:04d}", system, *distinct(rng, draw, seen), slice_name, checks)
        for i, (slice_name, draw) in enumerate(golden_draws, 1)
    ]
    return train, golden_rows


def write_jsonl(path: Path, rows: list[Row]) -> None:
    """One JSON object a line, UTF-8, written to a temporary name and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as handle:
        for item in rows:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def summary(train: list[Row], golden_rows: list[Row]) -> str:
    lines = [f"train: {len(train)} rows, golden: {len(golden_rows)} rows"]
    for name, rows in (("train", train), ("golden", golden_rows)):
        words = sorted(len(r["messages"][1]["content"].split()) for r in rows)
        answers = Counter(r["messages"][-1]["content"] for r in rows)
        lines.append(f"  {name} user words: min={words[0]} p50={words[len(words) // 2]} max={words[-1]}")
        lines.append(f"  {name} distinct answers: {len(answers)}")
    slices = Counter(r["slice"] for r in golden_rows)
    lines.append("  golden slices: " + ", ".join(f"{k}={v}" for k, v in sorted(slices.items())))
    return "\n".join(lines)


def main(build: Build, seed: int, here: Path, description: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=here, help="output folder (default: next to the script)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, golden_rows = build(random.Random(seed))
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "golden.jsonl", golden_rows)
    print(f"wrote {args.out / 'train.jsonl'} and {args.out / 'golden.jsonl'}")
    print(summary(train, golden_rows))
