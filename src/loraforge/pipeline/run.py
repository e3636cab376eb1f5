"""`loraforge train` end to end: train, then gate the best adapter and record the verdict in its manifest.

Train does not call the gate (they are sibling stages); this run composes them. The gate scores the
adapter as written to disk, so what is gated is exactly what ships.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelerate import Accelerator

from loraforge.config import Config
from loraforge.evaluate import GateReport
from loraforge.models import read_manifest, write_manifest
from loraforge.pipeline.evaluate_run import evaluate_run
from loraforge.pipeline.train_run import TrainRun, run_training
from loraforge.ship.card import write_model_card


@dataclass
class RunOutcome:
    train: TrainRun
    gate: GateReport | None  # None when eval.gate is off, or on the non-main processes of a launch

    @property
    def blocked(self) -> bool:
        return self.gate is not None and not self.gate.passed


def train_and_gate(config: Config, *, resume: bool = False, accelerator: Accelerator | None = None) -> RunOutcome:
    run = run_training(config, resume=resume, accelerator=accelerator)
    if not (config.eval.gate and run.main_process):
        return RunOutcome(run, None)
    report = evaluate_run(config, adapter_dir=run.adapter_dir)
    record_gate(run, report)
    # Ship steps, in this order (each one's files are covered by the next): the model card from the
    # completed manifest, then the signature when ship.key is set and the gate passed.
    write_model_card(run.adapter_dir)
    return RunOutcome(run, report)


def record_gate(run: TrainRun, report: GateReport) -> None:
    """Store the verdict in the adapter manifest (checked and rewritten atomically), so the artifact carries it."""
    manifest = read_manifest(run.adapter_dir) or dict(run.manifest)
    manifest["eval"] = report.summary()
    write_manifest(run.adapter_dir, manifest)
    run.manifest = manifest
