"""A schema-valid adapter manifest for tests that save an adapter without a training run.

save_adapter and read_manifest check every manifest against loraforge/models/manifest.schema.json,
so a test adapter carries a whole one; a real run's manifest is checked in test_ship_manifest.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from tiny import CHATML_TEMPLATE

from loraforge.models import MANIFEST_FORMAT

ZERO_SHA = "0" * 64
TEST_FINGERPRINT = "sha256:" + "f" * 64


def valid_manifest(
    fingerprint: str = TEST_FINGERPRINT, *, golden_sha256: str | None = None, **top: Any
) -> dict[str, Any]:
    """A format-2 manifest for a base with `fingerprint`; `top` replaces whole top-level keys."""
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created_at": "2026-12-01T00:00:00Z",
        "base": {"spec": "tiny", "fingerprint": fingerprint, "dtype": "float32", "hub_id": None, "license": None},
        "lora": {
            "r": 2,
            "alpha": 4.0,
            "dropout": 0.0,
            "variant": "lora",
            "targets": "all-linear",
            "target_modules": ["q_proj", "v_proj"],
        },  # fmt: skip
        # the tiny base's own template: the gate prompts an adapter in the template its manifest records
        "chat_template": {"text": CHATML_TEMPLATE, "sha256": hashlib.sha256(CHATML_TEMPLATE.encode()).hexdigest()},
        "tokenizer": {"sha256": ZERO_SHA},
        "data": {
            "train_sha256": ZERO_SHA,
            "eval_sha256": None,
            "golden_sha256": golden_sha256,
            "replay_sha256": None,
            "tokenized_sha256": ZERO_SHA,
            "max_seq_len": 64,
            "rows": {
                "rows_in": 4,
                "train": 3,
                "eval": 1,
                "golden": 0,
                "replay": 0,
                "dropped": {},
                "truncated": 0,
                "leaked": 0,
                "dedup": {"exact": 0, "near": 0},
                "pii": {"mode": "off", "rows_with_pii": 0, "by_recognizer": {}, "entities": {}, "dropped_dependent": 0},
            },  # fmt: skip
        },
        "seed": 0,
        "config": {"output": "runs/test"},
        "versions": {"python": "3", "torch": "2", "transformers": "5", "peft": "0", "loraforge": "0"},
        "training": {
            "final_step": 1,
            "total_steps": 1,
            "best_step": 1,
            "best_eval_loss": 1.0,
            "eval_losses": [{"step": 1, "loss": 1.0}],
            "tokens_per_second": 1.0,
            "wall_seconds": 1.0,
            "stop_reason": "reached 1 steps",
            "micro_batch_size": 1,
            "grad_accum": 1,
            "examples_per_step": 1.0,
            "resumed_from": None,
        },  # fmt: skip
        "eval": None,
    }
    manifest.update(copy.deepcopy(top))
    return manifest
