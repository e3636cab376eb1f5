"""A training run from a config: base -> data -> LoRA -> train -> best adapter with its manifest.

Each step is a plain function call, so the run reads in the order it happens. Under
`accelerate launch` every process runs this same code; only the main process writes shared files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import set_seed

from loraforge.batching import StepSize, step_size
from loraforge.config import Config, TrainSpec
from loraforge.config_text import render_yaml, to_plain
from loraforge.data import (
    PreparedData,
    collate_packed,
    collate_padded,
    pack_rows,
    template_sha256,
    write_data_report,
)
from loraforge.errors import TrainError
from loraforge.files import write_text_atomic
from loraforge.models import (
    LoadedBase,
    attach_lora,
    context_length,
    load_base,
    public_base,
    tokenizer_sha256,
    utc_timestamp,
)
from loraforge.pipeline.prepare import prepare_for_run
from loraforge.ship.card import write_model_card
from loraforge.train import (
    BatchPlan,
    TrainResult,
    export_adapter,
    qlora_quantization_config,
    resolve_base_dtype,
    resume_point,
    save_initial_adapter,
    train,
)

VERSIONED_PACKAGES = ("loraforge", "torch", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes")


@dataclass
class TrainRun:
    config: Config
    result: TrainResult
    adapter_dir: Path
    manifest: dict[str, Any]
    base_fingerprint: str
    main_process: bool = True  # False on the other processes of a multi-process launch


def run_training(config: Config, *, resume: bool = False, accelerator: Accelerator | None = None) -> TrainRun:
    """`loraforge train CONFIG`: train, keep the best checkpoint, write OUTPUT/adapter with its manifest.

    A run that may not go ahead (a changed run to resume, a --resume with nothing to resume, a fresh
    run into a used output) is refused before anything is written, so the earlier run's files stay."""
    accelerator = accelerator or Accelerator()
    out_dir = config.output
    base = load_train_base(config, accelerator.device)
    with accelerator.main_process_first():  # the main process fills the data cache; the others read it
        data = prepare_for_run(
            config, base.tokenizer, context_length(base.model.config), write_report=False,
            progress=accelerator.is_main_process,
        )  # fmt: skip
    identity = run_identity(config, base.fingerprint, data)
    resume_point(out_dir, identity, resume)
    batches, step = build_batch_plan(config, data, base, accelerator)
    spec = config.train.model_copy(update={"micro_batch_size": step.micro_batch_size, "grad_accum": step.grad_accum})
    if accelerator.is_main_process:
        tqdm.write(describe_step(step, len(batches.train_rows), config.train, accelerator.num_processes))
    set_seed(config.train.seed)  # LoRA init, the same on every process; same seed, same adapter bytes
    model = attach_lora(base.model, config.lora)
    initial_dir = _save_pissa_init(model, config, accelerator)
    if accelerator.is_main_process:
        write_data_report(out_dir, data.report)
        write_text_atomic(out_dir / "config.yaml", render_yaml(config))
    started = time.perf_counter()
    result = train(
        model,
        batches,
        spec,
        out_dir,
        identity=identity,
        resume=resume,
        loraplus_lr_ratio=config.lora.loraplus_lr_ratio if config.lora.variant == "loraplus" else None,
        accelerator=accelerator,
    )
    wall_seconds = time.perf_counter() - started
    configured = getattr(model.peft_config["default"], "target_modules", None) or []
    targets = [configured] if isinstance(configured, str) else sorted(configured)
    manifest = build_manifest(config, base, data, result, step, target_modules=targets, wall_seconds=wall_seconds)
    adapter_dir = out_dir / "adapter"
    if accelerator.is_main_process:
        export_adapter(model, adapter_dir, manifest, initial_dir)
        write_model_card(adapter_dir)  # replaces PEFT's boilerplate; rewritten once the gate has run
    accelerator.wait_for_everyone()
    # The eval gate runs here (pipeline, not train, calls it): score OUTPUT/adapter against the
    # golden set and store its report under manifest["eval"] before anything is shipped.
    return TrainRun(config, result, adapter_dir, manifest, base.fingerprint, accelerator.is_main_process)


def load_train_base(config: Config, device: torch.device) -> LoadedBase:
    """The frozen base in the dtype `train.precision` resolves to; 4-bit NF4 for QLoRA."""
    dtype = resolve_base_dtype(config.train.precision, device)
    quantization = qlora_quantization_config(dtype) if config.lora.variant == "qlora" else None
    return load_base(config.base, dtype=dtype, device=device, quantization_config=quantization)


def build_batch_plan(
    config: Config, data: PreparedData, base: LoadedBase, accelerator: Accelerator
) -> tuple[BatchPlan, StepSize]:
    """Packed rows (or one example per row) with the data stage's collate, sharded by process, and
    the step size for them (train.grad_accum=auto sizes it to the data: loraforge.batching).

    With train.replay_kl the collate marks the replay rows' loss tokens (`anchor`); eval rows are
    never replay rows, so eval loss keeps measuring the task alone.
    """
    pad_id = int(base.tokenizer.pad_token_id or 0)
    anchor = config.train.replay_kl is not None
    if anchor and not any(example.replay for example in data.train):
        raise TrainError(
            f"train.replay_kl is set but no row of data.replay ({config.data.replay}) is left to anchor after "
            "cleaning and fitting to max_seq_len; see 'dropped' in OUTPUT/data_report.json, or remove train.replay_kl"
        )
    if config.data.packing:
        train_rows: list[Any] = pack_rows(data.train, config.data, data.max_seq_len, config.train.seed)
        eval_rows: list[Any] = pack_rows(data.eval, config.data, data.max_seq_len, config.train.seed)
        collate: Any = partial(collate_packed, pad_token_id=pad_id, anchor=anchor)
    else:
        train_rows, eval_rows = list(data.train), list(data.eval)
        collate = partial(collate_padded, pad_token_id=pad_id, anchor=anchor)
    world = accelerator.num_processes
    step = step_size(len(data.train), len(train_rows), config.train.micro_batch_size, config.train.grad_accum, world)
    plan = BatchPlan(
        train_rows,
        eval_rows,
        collate,
        micro_batch_size=step.micro_batch_size,
        seed=config.train.seed,
        order=config.train.order,
        world_size=world,
        rank=accelerator.process_index,
    )
    return plan, step


def describe_step(step: StepSize, rows: int, spec: TrainSpec, processes: int = 1) -> str:
    """The line training starts with: how big a step is and how many there are."""
    steps = step.steps(rows, spec.epochs, processes)
    if spec.max_steps is not None:
        steps = min(steps, spec.max_steps)
    chosen = "train.grad_accum=auto" if step.rule == "auto" else f"train.grad_accum={step.grad_accum}"
    return (
        f"{steps} optimizer steps over {spec.epochs:g} epochs, {step.examples_per_step:.1f} examples a step = "
        f"{step.micro_batch_size} rows a forward x {step.grad_accum} forwards x {processes} processes x "
        f"{step.examples_per_row:.2f} examples a row ({chosen})"
    )


def _save_pissa_init(model: PeftModel, config: Config, accelerator: Accelerator) -> Path | None:
    """PiSSA's starting adapter, needed to export a plain-LoRA adapter for the original base."""
    if config.lora.variant != "pissa":
        return None
    path = config.output / "pissa_init"
    if accelerator.is_main_process:
        save_initial_adapter(model, config.output)
    accelerator.wait_for_everyone()
    return path


def tokenized_sha256(data: PreparedData) -> str:
    """Hash of exactly what trains (ids and labels of train and eval), whatever produced it."""
    digest = hashlib.sha256()
    for split in (data.train, data.eval):
        for example in split:
            digest.update(json.dumps([example.input_ids, example.labels]).encode())
        digest.update(b"|")
    return digest.hexdigest()


def run_identity(config: Config, base_fingerprint: str, data: PreparedData) -> dict[str, Any]:
    """What must not change between a checkpoint and its resume."""
    # ship: signing happens after training and changes no weight; setting ship.key on an
    # interrupted run (or resuming a checkpoint from before the section existed) must still resume.
    trained = {name: value for name, value in to_plain(config).items() if name != "ship"}
    return {"config": trained, "base_fingerprint": base_fingerprint, "data_sha256": tokenized_sha256(data)}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(
    config: Config,
    base: LoadedBase,
    data: PreparedData,
    result: TrainResult,
    step: StepSize,
    *,
    target_modules: list[str],
    wall_seconds: float,
) -> dict[str, Any]:
    """OUTPUT/adapter/loraforge.json as training writes it (eval: null until the gate fills it);
    every key is in loraforge/models/manifest.schema.json and docs/manifest.md."""
    report = data.report
    return {
        "created_at": utc_timestamp(),
        "base": base_section(config, base),
        "lora": {**to_plain(config.lora), "target_modules": sorted(target_modules)},
        # the template the rows were rendered with: the gate and serving prompt in it (docs/training.md)
        "chat_template": {"text": data.chat_template, "sha256": template_sha256(data.chat_template)},
        "tokenizer": {"sha256": tokenizer_sha256(base.model_dir)},
        "data": {
            **{f"{name}_sha256": report.get(f"{name}_sha256") for name in ("train", "eval", "golden", "replay")},
            "tokenized_sha256": tokenized_sha256(data),
            "max_seq_len": data.max_seq_len,
            "rows": data_rows(report),
        },
        "seed": config.train.seed,
        "config": to_plain(config),
        "versions": library_versions(),
        "training": training_section(result, step, wall_seconds),
        "eval": None,  # filled by the eval gate
    }


def base_section(config: Config, base: LoadedBase) -> dict[str, Any]:
    """The manifest's base: what the adapter was trained on, identified by its fingerprint."""
    hub_id, license_id = public_base(config.base)
    return {
        "spec": config.base,
        "fingerprint": base.fingerprint,
        "dtype": str(base.dtype).removeprefix("torch."),
        "hub_id": hub_id,
        "license": license_id,
    }


def training_section(result: TrainResult, step: StepSize, wall_seconds: float) -> dict[str, Any]:
    """The manifest's training: steps, the best checkpoint, speed and the step size."""
    return {
        "final_step": result.final_step,
        "total_steps": result.total_steps,
        "best_step": result.best_step,
        "best_eval_loss": result.best_eval_loss,
        "eval_losses": [{"step": s, "loss": loss} for s, loss in result.eval_losses],
        "tokens_per_second": round(result.tokens_per_s, 1),
        "wall_seconds": round(wall_seconds, 2),
        "stop_reason": result.stop_reason,
        "micro_batch_size": step.micro_batch_size,
        "grad_accum": step.grad_accum,
        "examples_per_step": round(step.examples_per_step, 2),
        "resumed_from": result.resumed_from,
    }


def data_rows(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's data.rows from data_report.json: counts after hygiene and what it removed."""
    split, pii, duplicates = report["split"], report["pii"], report["duplicates"]
    return {
        "rows_in": report["rows_in"],
        "train": split["train"],
        "eval": split["eval"],
        "golden": report["golden_rows"],
        "replay": split["replay"],
        "dropped": dict(report["dropped"]),
        "truncated": report["truncated"],
        "leaked": report["leaked"],
        "dedup": {"exact": duplicates["exact"], "near": duplicates["near"]},
        "pii": {
            "mode": pii["mode"],
            "rows_with_pii": pii["rows_with_pii"],
            "by_recognizer": dict(pii["rows_by_recognizer"]),
            "entities": dict(pii["counts"]),
            "dropped_dependent": pii["dropped_dependent"],
        },
    }
