"""One real tiny training run, gated, shared by the ship tests (it costs seconds, so it runs once)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from loraforge.config import validate_config
from loraforge.pipeline.run import RunOutcome, train_and_gate

SLICES = ("orders", "returns")


def _row(i: int, slice_name: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"r-{i}",
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": f"what is item {i} of the order please"},
            {"role": "assistant", "content": f"item {i} is a desk"},
        ],
    }
    if slice_name is not None:
        row["slice"] = slice_name
    return row


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ship_config(tmp_path: Path, base: Path) -> dict[str, Any]:
    """A config training the tiny base for two steps and gating it on two golden slices."""
    train = [_row(i) for i in range(24)] + [{**_row(0), "id": "r-0-again"}]  # an exact duplicate to drop
    golden = [_row(100 + i, SLICES[i % 2]) for i in range(4)]
    return {
        "base": str(base),
        "output": str(tmp_path / "run"),
        "data": {
            "train": str(_write_jsonl(tmp_path / "train.jsonl", train)),
            "golden": str(_write_jsonl(tmp_path / "golden.jsonl", golden)),
            "pii": "off",
            "replay": None,  # a tiny base finishes no built-in replay prompt (conftest)
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "micro_batch_size": 4, "eval_every": 1.0, "precision": "fp32"},
        "eval": {"max_new_tokens": 4, "probes": [], "precision": "fp32", "tolerance": 3},
    }


@functools.cache
def gated_run(tmp_dir: Path, base: Path) -> RunOutcome:
    """train_and_gate on the tiny base, once per (directory, base) in a test session."""
    return train_and_gate(validate_config(ship_config(tmp_dir, base), source="test"))
