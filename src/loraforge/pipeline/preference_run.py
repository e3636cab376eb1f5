"""A preference run from a config (train.method: dpo): base -> pairs -> LoRA -> reference scores ->
train -> best adapter with its manifest; `loraforge train` then gates it as it gates SFT.

It reuses the SFT run's pieces (pipeline.train_run) wherever the two agree; what differs is the data
stage (data.prepare_pairs), the objective (train.preference) and what the manifest's data section
counts. The reference policy is the model as the run starts; its scores are computed before the
first step, and again on a resume, where the fresh adapter starts from the same seeded init.
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import partial
from typing import Any, cast

from accelerate import Accelerator
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from tqdm.auto import tqdm
from transformers import set_seed

from loraforge.batching import step_size
from loraforge.config import Config, LoraSpec
from loraforge.config_text import render_yaml, to_plain
from loraforge.data import PreparedPairs, prepare_pairs, template_sha256, write_data_report
from loraforge.errors import ModelError
from loraforge.files import sha256_file, write_text_atomic
from loraforge.models import (
    LoadedBase,
    attach_lora,
    context_length,
    load_adapter,
    read_manifest,
    tokenizer_sha256,
    utc_timestamp,
)
from loraforge.pipeline.evaluate_run import read_golden
from loraforge.pipeline.train_run import (
    TrainRun,
    base_section,
    describe_step,
    library_versions,
    load_train_base,
    training_section,
)
from loraforge.ship.card import write_model_card
from loraforge.train import BatchPlan, export_adapter, resume_point, train
from loraforge.train.checkpoint import ADAPTER_WEIGHTS
from loraforge.train.preference import collate_pairs, reference_scores

REFERENCE_BATCH = 8  # pairs scored together before the first step (16 rows a forward)


def run_preference_training(
    config: Config, *, resume: bool = False, accelerator: Accelerator | None = None
) -> TrainRun:
    """`loraforge train CONFIG` with train.method: dpo. A run that may not go ahead is refused
    before anything is written, as for SFT (pipeline.train_run.run_training)."""
    accelerator = accelerator or Accelerator()
    out_dir = config.output
    base = load_train_base(config, accelerator.device)
    golden, golden_sha256 = read_golden(config)
    with accelerator.main_process_first():
        data = prepare_pairs(
            config.data, base.tokenizer, seed=config.train.seed, context_length=context_length(base.model.config),
            golden=golden, progress=accelerator.is_main_process,
        )  # fmt: skip
    identity = {
        "config": {name: value for name, value in to_plain(config).items() if name != "ship"},
        "base_fingerprint": base.fingerprint,
        "data_sha256": pairs_sha256(data),
    }
    if config.train.init_adapter is not None:  # the starting weights: a changed file must not resume
        identity["init_adapter_sha256"] = sha256_file(config.train.init_adapter / ADAPTER_WEIGHTS)
    resume_point(out_dir, identity, resume)
    world = accelerator.num_processes
    step = step_size(len(data.train), len(data.train), config.train.micro_batch_size, config.train.grad_accum, world)
    spec = config.train.model_copy(update={"micro_batch_size": step.micro_batch_size, "grad_accum": step.grad_accum})
    if accelerator.is_main_process:
        tqdm.write(describe_step(step, len(data.train), config.train, world).replace("examples", "pairs"))
    set_seed(config.train.seed)
    model, lora = start_adapter(config, base, data.chat_template)
    progress = accelerator.is_main_process
    train_rows = reference_scores(model, data.train, REFERENCE_BATCH, progress=progress)
    eval_rows = reference_scores(model, data.eval, REFERENCE_BATCH, progress=progress)
    pad_id = int(base.tokenizer.pad_token_id or 0)
    plan = BatchPlan(
        train_rows, eval_rows, partial(collate_pairs, pad_id=pad_id), micro_batch_size=step.micro_batch_size,
        seed=config.train.seed, world_size=world, rank=accelerator.process_index,
    )  # fmt: skip
    if accelerator.is_main_process:
        write_data_report(out_dir, data.report)
        write_text_atomic(out_dir / "config.yaml", render_yaml(config))
    started = time.perf_counter()
    result = train(model, plan, spec, out_dir, identity=identity, resume=resume, accelerator=accelerator)
    wall_seconds = time.perf_counter() - started
    configured = getattr(model.peft_config["default"], "target_modules", None) or []
    targets = [configured] if isinstance(configured, str) else sorted(configured)
    manifest = {
        "created_at": utc_timestamp(),
        "base": base_section(config, base),
        "lora": {**to_plain(lora), "target_modules": targets},
        "chat_template": {"text": data.chat_template, "sha256": template_sha256(data.chat_template)},
        "tokenizer": {"sha256": tokenizer_sha256(base.model_dir)},
        "data": {
            "train_sha256": data.report["train_sha256"],
            "eval_sha256": data.report["eval_sha256"],
            "golden_sha256": golden_sha256,
            "replay_sha256": None,
            "tokenized_sha256": pairs_sha256(data),
            "max_seq_len": data.max_seq_len,
            "rows": pair_rows(data.report),
        },
        "seed": config.train.seed,
        "config": to_plain(config),
        "versions": library_versions(),
        "training": training_section(result, step, wall_seconds),
        "eval": None,
    }
    adapter_dir = out_dir / "adapter"
    if accelerator.is_main_process:
        export_adapter(model, adapter_dir, manifest, None)
        write_model_card(adapter_dir)
    accelerator.wait_for_everyone()
    return TrainRun(config, result, adapter_dir, manifest, base.fingerprint, accelerator.is_main_process)


def start_adapter(config: Config, base: LoadedBase, chat_template: str) -> tuple[PeftModel, LoraSpec]:
    """The policy at step 0 (so also the reference) and the LoRA shape it has: a fresh adapter of
    `lora:`, or train.init_adapter loaded trainable (refused when it was trained on another base or
    in another chat template). Either way without dropout: a pair's two log-probabilities and its
    reference must come from one function (TRL's DPOTrainer turns dropout off for the same reason)."""
    source = config.train.init_adapter
    if source is None:
        lora = config.lora.model_copy(update={"dropout": 0.0})
        return attach_lora(base.model, lora), lora
    manifest = read_manifest(source) or {}
    recorded = (manifest.get("chat_template") or {}).get("sha256")
    if recorded is not None and recorded != template_sha256(chat_template):
        raise ModelError(
            f"train.init_adapter {source}: trained in another chat template (sha256 {recorded[:12]}...) than this "
            f"run's ({template_sha256(chat_template)[:12]}...); set data.template to the one it was trained with"
        )
    model = load_adapter(base.model, source, base.fingerprint, trainable=True)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for dropout in module.lora_dropout.values():
                if isinstance(dropout, nn.Dropout):
                    dropout.p = 0.0
    peft = cast(LoraConfig, model.peft_config["default"])
    variant = "dora" if getattr(peft, "use_dora", False) else "rslora" if getattr(peft, "use_rslora", False) else "lora"
    lora = config.lora.model_copy(
        update={"r": peft.r, "alpha": float(peft.lora_alpha), "dropout": 0.0, "variant": variant, "top_layers": None}
    )
    return model, lora


def pairs_sha256(data: PreparedPairs) -> str:
    """Hash of exactly what trains: every pair's prompt, chosen and rejected ids, train then eval."""
    digest = hashlib.sha256()
    for split in (data.train, data.eval):
        for pair in split:
            digest.update(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode())
        digest.update(b"|")
    return digest.hexdigest()


def pair_rows(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's data.rows for a pairs run (the same keys as SFT's; pairs are the rows)."""
    duplicates = report["duplicates"]
    return {
        "rows_in": report["rows_in"],
        "train": report["split"]["train"],
        "eval": report["split"]["eval"],
        "golden": report["golden_rows"],
        "replay": 0,
        "dropped": dict(report["dropped"]),
        "truncated": report["truncated"],
        "leaked": report["leaked"],
        "dedup": {"exact": duplicates["exact"], "near": duplicates["near"]},
        "pii": {"mode": "off", "rows_with_pii": 0, "by_recognizer": {}, "entities": {}, "dropped_dependent": 0},
    }
