"""The demo: what `make demo` runs. The embedded base learns the bundled support-ticket task.

Steps, each a plain call: resolve the base -> prepare the data -> train -> gate -> base vs adapter
side by side -> sign, publish and promote (a passing adapter only) -> serve it and answer one
request (the caller's `serve_step`: serve is a sibling stage this package does not import) ->
where things are.
The caller passes `show(step, payload)` to render each step as it finishes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from loraforge.config import Config, validate_config
from loraforge.config_yaml import apply_overrides
from loraforge.data.types import PreparedData
from loraforge.errors import ConfigError, ResumeRefused
from loraforge.evaluate import GateReport
from loraforge.files import loraforge_home, write_text_atomic
from loraforge.models import load_base, load_tokenizer
from loraforge.models.card import BaseCard, base_card
from loraforge.pipeline.prepare import prepare_for_run
from loraforge.pipeline.run import RunOutcome, train_and_gate
from loraforge.recipe import DEFAULT_BASE
from loraforge.ship.registry import Entry, Registry
from loraforge.ship.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, generate_keypair, verify_adapter
from loraforge.train import resolve_base_dtype
from loraforge.train.checkpoint import complete_checkpoints

DEFAULT_DATA_DIR = Path("examples/support_tickets")

# The demo's budget (docs/PERFORMANCE.md, "The demo"): 0.3 epoch over the 760 task rows and the
# replay rows, one packed row of 384 tokens a step (~2.1 task examples behind one copy of their
# 63-token system prompt, data.share_prefix), lr 1e-3: 127 optimizer steps, ~230 task examples.
# The recipe's rank, alpha, targets, schedule shape and warmup stay. Measured on the way here
# (2-core fp32 CPU, 2026-11-30): the earlier 0.65 epoch at lr 5e-4 in steps of 2 rows passed
# 80.0% of the golden rows in 12 minutes of training; steps of one row at lr 1e-3 learn the
# issue and urgency labels from fewer examples (0.35 epoch: 89.2%; 0.3 epoch with 30% replay:
# 91.7%), while 0.25 epoch fell to 76.7%. A higher lr forgets more, so replay (the base's own
# answers to 71 general prompts, data.replay=builtin) is 30% of the training rows.
# No LoRA dropout: the demo sees each example about once, so there is nothing to overfit, and
# drawing and applying the masks was ~10% of a step (training 7:18 -> 5:32-6:14). Without dropout
# the adapter learned the replay's 9 near-identical refusals as a reflex and refused 3 benign
# safety probes; with them dropped from replay.jsonl it answered all 12 benign ones and refused
# 13 of 14 harmful ones, golden 90.0%. Adapting only the top 10 of 30 layers (lora.top_layers)
# ran 1.5x faster but passed 43% and lost 9 safety probes. Eval loss runs once, at the end (a
# quarter epoch is about the whole run), on 5% of the task rows (40).
DEMO_LORA = {"dropout": 0.0}
DEMO_DATA = {"eval_fraction": 0.05, "replay_ratio": 0.3, "pack_len": 384}
DEMO_TRAIN = {"epochs": 0.3, "lr": 1e-3, "eval_every": 0.3, "micro_batch_size": 1, "grad_accum": 1}
# The task's answers are at most 42 tokens of JSON: 48 new tokens bounds a base that rambles.
DEMO_EVAL = {"max_new_tokens": 48}
# --quick (the slow test set): a slice of the data, a few steps; shows the path, not the quality.
QUICK_ROWS = {"train": 96, "golden": 16}
QUICK_TRAIN = {"epochs": 1.0, "max_steps": 8, "eval_every": 0.5, "micro_batch_size": 2, "grad_accum": 1}
DEMO_REGISTRY_NAME = "support-tickets"  # the name the demo publishes under in $LORAFORGE_HOME/registry

Show = Callable[[str, Any], None]
ServeStep = Callable[["Config", PreparedData, "DemoShip"], Any]  # its result is shown as step "serve"


@dataclass
class DemoShip:
    """What the ship step did with a passing adapter."""

    signature: Path | None  # None when ship.key was overridden to null
    public_key: Path | None  # the public.pem it verified against, when one sits beside ship.key
    verified_files: tuple[str, ...]
    entry: Entry  # the registry version published and promoted (live)
    registry: Path


@dataclass
class DemoResult:
    config: Config
    card: BaseCard
    data: PreparedData
    outcome: RunOutcome
    shipped: DemoShip | None = None  # None when the gate blocked (or was off)
    served: Any = None  # what serve_step returned, when it ran

    @property
    def gate(self) -> GateReport | None:
        return self.outcome.gate


def demo_config(
    data_dir: Path, output: Path, quick: bool, base: str = DEFAULT_BASE, overrides: list[str] | None = None
) -> Config:
    """The demo's config; `overrides` are `--set key.path=value` texts, applied last (e.g. train.seed=1)."""
    train, golden = data_dir / "train.jsonl", data_dir / "golden.jsonl"
    if not train.is_file() or not golden.is_file():
        raise ConfigError(
            [f"{data_dir}: needs train.jsonl and golden.jsonl; run from the repository root or pass --data-dir"], "demo"
        )
    if quick:
        train = _head(train, output / "data" / "train.jsonl", QUICK_ROWS["train"])
        golden = _head(golden, output / "data" / "golden.jsonl", QUICK_ROWS["golden"])
    raw = {
        "base": base,
        "output": str(output),
        "data": {"train": str(train), "golden": str(golden), **DEMO_DATA},
        "lora": DEMO_LORA,
        "train": QUICK_TRAIN if quick else DEMO_TRAIN,
        "eval": {**DEMO_EVAL, **({"max_new_tokens": 64, "probes": ["general"]} if quick else {})},
        "ship": {"key": str(demo_signing_key())},
    }
    return validate_config(apply_overrides(raw, overrides or []), source="demo")


def demo_signing_key() -> Path:
    """The demo's private key: a pair made once under $LORAFORGE_HOME/keys/demo and reused, so every
    demo adapter verifies with the same public.pem."""
    key_dir = loraforge_home() / "keys" / "demo"
    private, public = key_dir / PRIVATE_KEY_NAME, key_dir / PUBLIC_KEY_NAME
    if private.is_file() and public.is_file():
        return private
    return generate_keypair(key_dir, overwrite=True)[0]  # half a pair (a killed keygen) is replaced whole


def _head(source: Path, dest: Path, rows: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
    write_text_atomic(dest, "".join(lines))
    return dest


def run_demo(config: Config, show: Show, serve_step: ServeStep | None = None) -> DemoResult:
    started = time.perf_counter()
    base = load_base(config.base)  # converts the embedded GGUF once; later runs read the cache
    card = base_card(base)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the precision line reports what training will use, and whether the user chose it (train.precision)
    dtype = "bf16" if resolve_base_dtype(config.train.precision, device) == torch.bfloat16 else "fp32"
    show(
        "base",
        {
            "card": card,
            "load_seconds": base.load_seconds,
            "dtype": dtype,
            "device": device,
            "asked": config.train.precision,
        },
    )
    del base  # training loads the base in its own precision
    tokenizer = load_tokenizer(config.base)
    data_started = time.perf_counter()
    data = step_prepare(config, tokenizer, card.context_length)
    show(
        "data",
        {
            "report": data.report,
            "example": data.train[0] if data.train else None,
            "tokenizer": tokenizer,
            "output": config.output,
        },
    )
    train_started = time.perf_counter()
    outcome = train_again_or_afresh(config, show)
    finished = time.perf_counter()
    show("train", outcome.train)
    shipped, served, serve_seconds = None, None, 0.0
    if outcome.gate is not None:
        show("gate", {"report": outcome.gate, "eval_dir": config.output / "eval"})
        show("side_by_side", side_by_side(outcome.gate, n=3))
        if outcome.gate.passed:
            shipped = ship_demo(config, outcome)
            show("ship", shipped)
            if serve_step is not None:
                serve_started = time.perf_counter()
                served = serve_step(config, data, shipped)
                serve_seconds = time.perf_counter() - serve_started
                show("serve", served)
        else:
            show("note", "the gate blocked the adapter: it is not signed and not published")
    show("paths", artifact_paths(config))
    gate_roles = dict(outcome.gate.info.get("seconds") or {}) if outcome.gate is not None else {}
    gate_seconds = sum(gate_roles.values())
    strength = (outcome.gate.info.get("strength") or {}) if outcome.gate is not None else {}
    strength_seconds = float(strength.get("seconds", 0.0)) if strength.get("tried") else 0.0
    show(
        "time",
        {
            "total": time.perf_counter() - started,  # with the ship step
            "base": data_started - started,
            "data": train_started - data_started,
            # with loading, eval loss and saving; the strength step and the gate are their own
            "training": finished - train_started - gate_seconds - strength_seconds,
            "strength": strength_seconds,
            "gate": gate_seconds,
            "gate_roles": gate_roles,
            "serve": serve_seconds,
        },
    )
    return DemoResult(config, card, data, outcome, shipped, served)


def ship_demo(config: Config, outcome: RunOutcome) -> DemoShip:
    """The adapter train_and_gate signed (ship.key): verify it, publish it to the default registry
    and make that version live."""
    adapter_dir = outcome.train.adapter_dir
    public = config.ship.key.with_name(PUBLIC_KEY_NAME) if config.ship.key is not None else None
    verified: tuple[str, ...] = ()
    if outcome.signature is not None and public is not None and public.is_file():
        verified = verify_adapter(adapter_dir, public).files  # what is published is what was signed
    else:
        public = None
    registry = Registry.default()
    entry = registry.publish(adapter_dir, DEMO_REGISTRY_NAME)
    registry.promote(entry.name, entry.version)
    return DemoShip(outcome.signature, public, verified, entry, registry.root)


def train_again_or_afresh(config: Config, show: Show) -> RunOutcome:
    """Train and gate; a second `make demo` must work too. Where the output holds an earlier demo run
    of the same config, base and data, that run is resumed (a finished one goes straight to the gate,
    whose base answers are cached). Where any of them changed, the earlier run's files are moved to
    OUTPUT.previous (replacing an older one) and training starts afresh. OUTPUT/data (the --quick
    slices of the inputs, written for this run) stays. The refused resume writes nothing, so the
    earlier run's config.yaml and data_report.json move with it unchanged."""
    if not complete_checkpoints(config.output / "checkpoints"):
        return train_and_gate(config)
    show("note", f"{config.output} holds an earlier demo run: resuming it (a finished run goes straight to the gate)")
    try:
        return train_and_gate(config, resume=True)
    except ResumeRefused:
        previous = config.output.with_name(config.output.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir(parents=True)
        for entry in config.output.iterdir():
            if entry.name != "data":
                entry.rename(previous / entry.name)
        show("note", f"the earlier run's config, base or data differ: moved it to {previous}; training afresh")
        return train_and_gate(config)


def step_prepare(config: Config, tokenizer: PreTrainedTokenizerBase, context_length: int) -> PreparedData:
    """The data stage alone, for its report; `train` finds the result in the cache and writes
    OUTPUT/data_report.json once it knows the run goes ahead (an earlier run's report stays until then)."""
    return prepare_for_run(config, tokenizer, context_length, write_report=False, progress=True)


def side_by_side(report: GateReport, n: int = 3) -> list[dict[str, str]]:
    """The first n golden (non-probe) rows: question, reference, base answer, adapter answer."""
    rows = [r for r in report.rows if not r.case.probe][:n]
    return [
        {
            "question": r.case.question,
            "reference": r.case.reference,
            "base": r.outputs.get("base", ""),
            "adapter": r.outputs.get("adapter", ""),
            "base_passed": str(r.passed.get("base", False)),
            "adapter_passed": str(r.passed.get("adapter", False)),
        }
        for r in rows
    ]


def artifact_paths(config: Config) -> dict[str, str]:
    out = config.output
    return {
        "adapter": str(out / "adapter"),
        "manifest": str(out / "adapter" / "loraforge.json"),
        "eval report": str(out / "eval" / "report.html"),
        "loss curve": str(out / "loss.png"),
        "metrics": str(out / "metrics.jsonl"),
        "data report": str(out / "data_report.json"),
        "config": str(out / "config.yaml"),
    }
