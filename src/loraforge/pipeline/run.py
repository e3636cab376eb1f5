"""`loraforge train` end to end: train, then gate the best adapter and record the verdict in its manifest.

Train does not call the gate (they are sibling stages); this run composes them. The gate scores the
adapter as written to disk, so what is gated is exactly what ships.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from loraforge.config import Config
from loraforge.evaluate import GateReport
from loraforge.models import read_manifest, write_manifest
from loraforge.pipeline.evaluate_run import evaluate_run
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
    run = run_training(config, resume=resume, accelerator=accelerator)
    if not (config.eval.gate and run.main_process):
        return RunOutcome(run, None)
    report = evaluate_run(config, adapter_dir=run.adapter_dir)
    record_gate(run, report)
    # Ship steps, in this order (each one's files are covered by the next): the model card from the
    # completed manifest, then the signature when ship.key is set and the gate passed.
    write_model_card(run.adapter_dir)
    signature = sign_if_passed(run.adapter_dir, report, key)
    return RunOutcome(run, report, signature)


def sign_if_passed(adapter_dir: Path, report: GateReport, key: SigningKey | None) -> Path | None:
    """Sign the gated adapter (last: the signature covers every file before it); a blocked one stays unsigned."""
    if key is None or not report.passed:
        # record_gate rewrote the manifest, so a model.sig left from an earlier run no longer matches
        (adapter_dir / SIGNATURE_NAME).unlink(missing_ok=True)
        return None
    return sign_adapter(adapter_dir, key.path, key.password)


def record_gate(run: TrainRun, report: GateReport) -> None:
    """Store the verdict in the adapter manifest (checked and rewritten atomically), so the artifact carries it."""
    manifest = read_manifest(run.adapter_dir) or dict(run.manifest)
    manifest["eval"] = report.summary()
    write_manifest(run.adapter_dir, manifest)
    run.manifest = manifest
