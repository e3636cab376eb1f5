"""`loraforge train` end to end: train, then gate the best adapter and record the verdict in its manifest.

Train does not call the gate (they are sibling stages); this run composes them. The gate scores the
adapter as written to disk, so what is gated is exactly what ships.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from loraforge.config import Config
from loraforge.evaluate import GateReport
from loraforge.models import read_manifest, write_manifest
from loraforge.pipeline.evaluate_run import evaluate_run
from loraforge.pipeline.preference_run import run_preference_training
from loraforge.pipeline.train_run import TrainRun, run_training
from loraforge.ship.card import write_model_card
from loraforge.ship.signing import SIGNATURE_NAME, SigningKey, sign_adapter, signing_key


@dataclass
class RunOutcome:
    train: TrainRun
    gate: GateReport | None  # None when eval.gate is off, or on the non-main processes of a launch
    signature: Path | None = None  # ADAPTER_DIR/model.sig when ship.key is set and the gate passed

    @property
    def blocked(self) -> bool:
        return self.gate is not None and not self.gate.passed


def train_and_gate(config: Config, *, resume: bool = False, accelerator: Accelerator | None = None) -> RunOutcome:
    key = signing_key(config.ship)  # a missing key or password fails now, not after training
    training = run_preference_training if config.train.method == "dpo" else run_training
    run = training(config, resume=resume, accelerator=accelerator)
    if not (config.eval.gate and run.main_process):
        return RunOutcome(run, None)
    report = evaluate_run(config, adapter_dir=run.adapter_dir, settle_strength=True)
    run.manifest = record_gate(run.adapter_dir, report) or run.manifest
    signature = ship_gated(run.adapter_dir, report, key)
    return RunOutcome(run, report, signature)


@dataclass
class GateOutcome:
    """`loraforge eval` on an existing adapter: the report, and what it did to the adapter's files."""

    report: GateReport
    recorded: bool  # the verdict went into the adapter's manifest and card (False: no loraforge.json)
    signature: Path | None  # re-signed with ship.key after a pass; None otherwise


def gate_and_record(
    config: Config,
    adapter_dir: Path | None = None,
    against_dir: Path | None = None,
    allow_new_golden: bool = False,
) -> GateOutcome:
    """Gate an adapter on disk and record the verdict in it, as `loraforge train` does after training:
    manifest["eval"], the model card, and the signature (re-signed with ship.key after a pass; a
    signature the rewrite invalidated is removed otherwise)."""
    key = signing_key(config.ship)
    adapter_dir = adapter_dir or config.output / "adapter"
    report = evaluate_run(config, adapter_dir, against_dir, allow_new_golden)
    if record_gate(adapter_dir, report) is None:
        return GateOutcome(report, recorded=False, signature=None)
    return GateOutcome(report, recorded=True, signature=ship_gated(adapter_dir, report, key))


def ship_gated(adapter_dir: Path, report: GateReport, key: SigningKey | None) -> Path | None:
    """The ship steps after a recorded gate, in this order (each one's files are covered by the next):
    the model card from the completed manifest, then the signature when a key is given and the gate passed."""
    write_model_card(adapter_dir)
    return sign_if_passed(adapter_dir, report, key)


def sign_if_passed(adapter_dir: Path, report: GateReport, key: SigningKey | None) -> Path | None:
    """Sign the gated adapter (last: the signature covers every file before it); a blocked one stays unsigned."""
    if key is None or not report.passed:
        # record_gate rewrote the manifest, so a model.sig left from an earlier run no longer matches
        (adapter_dir / SIGNATURE_NAME).unlink(missing_ok=True)
        return None
    return sign_adapter(adapter_dir, key.path, key.password)


def record_gate(adapter_dir: Path, report: GateReport) -> dict[str, Any] | None:
    """Store the verdict in the adapter manifest (checked and rewritten atomically), so the artifact
    carries it; None when the adapter has no manifest (a plain PEFT adapter: nothing to record into)."""
    manifest = read_manifest(adapter_dir)
    if manifest is None:
        return None
    manifest["eval"] = report.summary()
    write_manifest(adapter_dir, manifest)
    return manifest
