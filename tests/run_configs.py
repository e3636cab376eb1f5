"""A small `loraforge train` config on a tiny base, shared by the train-run and signing tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraforge.config import Config, validate_config

SYSTEM = "Answer in one word."


def _rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r-{i}",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"what is item {i} of the order please"},
                {"role": "assistant", "content": f"item {i} is a desk"},
            ],
        }
        for i in range(start, start + n)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _raw(tmp_path: Path, base: Path, template: Path | None = None) -> dict[str, Any]:
    # replay off: a base prompted in data.template gets no seeded replay cache (conftest), and a tiny
    # base answering the 151 built-in prompts costs minutes for rows it never finishes
    data: dict[str, Any] = {"train": str(_write_jsonl(tmp_path / "train.jsonl", _rows(24))), "pii": "off"}
    data["replay"] = None
    data["golden"] = str(_write_jsonl(tmp_path / "golden.jsonl", _rows(3, start=100)))
    if template is not None:
        data["template"] = str(template)
    return {
        "base": str(base),
        "output": str(tmp_path / "run"),
        "data": data,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "micro_batch_size": 4, "eval_every": 1.0, "precision": "fp32"},
        "eval": {"max_new_tokens": 4, "probes": [], "precision": "fp32", "tolerance": 3},
    }


def _config(raw: dict[str, Any]) -> Config:
    return validate_config(raw, source="test")


def _write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path
