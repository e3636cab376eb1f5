"""`loraforge plan`: parameter counts, peak memory, time and cost of a config, without weights.

plan_run(config, tier) reads the base's config.json (meta device), the data stage's report when
there is one, and the hardware tier; every number it cannot know is an assumption that the
returned Plan lists, so the printed table says what it rests on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loraforge.batching import StepSize, step_size
from loraforge.config import Config
from loraforge.errors import ConfigError
from loraforge.models.base import fast_bf16_available
from loraforge.models.lora import top_layers_problem
from loraforge.plan.hardware import Tier
from loraforge.plan.memory import ADAPTER_BYTES, Precision, StepShape, dynamic_bytes, memory_breakdown, static_bytes
from loraforge.plan.recommend import Recommendation, gpus_needed, recommend
from loraforge.plan.shapes import LinearGroup, ModelShape, model_shape, target_groups, trainable_by_module

REPORT_NAME = "data_report.json"  # written by the data stage into the run directory (docs/data.md)
ASSUMED_SEQ_LEN = 1024  # max_seq_len=auto before `prepare` ran: a typical chat SFT p95
ASSUMED_LOSS_FRACTION = 1.0  # without a report, every token carries loss (the most memory the head can take)
CHARS_PER_TOKEN = 4.0  # BPE tokenizers average ~4 characters of English per token
MAX_MICRO_BATCH_SEARCH = 4096  # the largest micro-batch the fit search tries


@dataclass(frozen=True)
class DataFacts:
    """What the estimate knows about the data, and where each figure came from."""

    tokens: int | None  # training tokens in one epoch
    examples: int | None
    rows: int | None  # training rows (packed sequences, or examples without packing)
    seq_len: int
    loss_fraction: float
    packing_efficiency: float
    assumptions: tuple[str, ...]


@dataclass
class Plan:
    base: str
    architecture: str
    tier: Tier
    gpus: int
    precision: Precision
    step: StepShape
    trainable_params: int
    trainable_by_module: dict[str, int]
    base_params: int
    adapter_bytes: int
    memory: dict[str, int]
    activations_by_checkpointing: dict[str, int]
    fits: bool
    max_micro_batch: int
    tokens: int | None
    flops_per_token: float
    total_flops: float | None
    hours: float | None
    cost_usd: float | None
    recommendation: Recommendation
    steps: StepSize | None = None  # None: the example count is unknown
    optimizer_steps: int | None = None
    epochs: float = 0.0
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        """Base plus adapter, as PEFT's get_nb_trainable_parameters() reports 'all params'."""
        return self.base_params + self.trainable_params

    def as_json(self) -> dict[str, Any]:
        """The `plan --json` document; docs/plan.md describes every key."""
        return {
            "base": self.base,
            "architecture": self.architecture,
            "trainable_params": self.trainable_params,
            "trainable_by_module": self.trainable_by_module,
            "total_params": self.total_params,
            "base_params": self.base_params,
            "adapter_bytes": self.adapter_bytes,
            "precision": self.precision,
            "micro_batch_size": self.step.micro_batch_size,
            "grad_accum": self.steps.grad_accum if self.steps else None,
            "examples_per_step": round(self.steps.examples_per_step, 2) if self.steps else None,
            "optimizer_steps": self.optimizer_steps,
            "epochs": self.epochs,
            "seq_len": self.step.seq_len,
            "gradient_checkpointing": self.step.gradient_checkpointing,
            "memory": self.memory,
            "activations_by_checkpointing": self.activations_by_checkpointing,
            "hardware": self.tier.as_dict() | {"usable_bytes": self.tier.usable_bytes},
            "gpus": self.gpus,
            "fits": self.fits,
            "max_micro_batch": self.max_micro_batch,
            "tokens": self.tokens,
            "flops_per_token": self.flops_per_token,
            "total_flops": self.total_flops,
            "hours": self.hours,
            "cost_usd": self.cost_usd,
            "method": self.recommendation.method,
            "tier": self.recommendation.tier,
            "reasons": self.recommendation.reasons,
            "config_keys": self.recommendation.config_keys,
            "assumptions": self.assumptions,
        }


def read_data_facts(config: Config, shape: ModelShape, tokens_override: int | None = None) -> DataFacts:
    """Tokens, examples, sequence length and loss share: from OUTPUT/data_report.json, else assumed."""
    notes: list[str] = []
    report = _read_report(config.output / REPORT_NAME)
    tokens: int | None = None
    examples: int | None = None
    rows: int | None = None
    loss_fraction = ASSUMED_LOSS_FRACTION
    packing_efficiency = 1.0
    if report is not None:
        counts = report.get("tokens", {})
        tokens = int(counts.get("train", 0)) or None
        packed = report.get("packed") or {}
        if tokens and packed.get("shared_prefix_tokens_saved"):
            # a shared prefix is computed once a row: the rows hold fewer tokens than the examples
            saved = int(packed["shared_prefix_tokens_saved"])
            notes.append(f"shared prefixes: {saved:,} of {tokens:,} example tokens computed once a row instead")
            tokens -= saved
        if tokens and counts.get("train_loss") is not None:
            loss_fraction = max(min(int(counts["train_loss"]) / tokens, 1.0), 1e-6)
        examples = int(report.get("split", {}).get("train", 0)) or None
        rows = int(packed.get("rows", 0)) or examples
        packing_efficiency = float(report.get("packing_efficiency") or 1.0)
    else:
        notes.append(f"no {config.output / REPORT_NAME}: run `loraforge prepare` for measured token counts")
        notes.append(f"every token carries loss (loss fraction {ASSUMED_LOSS_FRACTION:.0%})")
    if isinstance(config.data.max_seq_len, int):
        seq_len = config.data.max_seq_len
    elif report is not None and report.get("max_seq_len"):
        seq_len = int(report["max_seq_len"])
    else:
        seq_len = min(ASSUMED_SEQ_LEN, shape.context_length or ASSUMED_SEQ_LEN)
        notes.append(f"max_seq_len=auto and no data report: assumed {seq_len} tokens")
    if config.data.packing and isinstance(config.data.pack_len, int):
        seq_len = max(seq_len, config.data.pack_len)  # packed rows: data.pack_len, never below max_seq_len
    if tokens_override is not None:
        tokens = tokens_override
        notes.append(f"tokens from --tokens: {tokens:,}")
    elif tokens is None:
        tokens = _tokens_from_file_size(config.data.train)
        if tokens is not None:
            notes.append(f"tokens guessed from {config.data.train} size at {CHARS_PER_TOKEN} bytes a token")
    if examples is None and config.data.train.is_file():
        examples = _examples_from_lines(config)
        rows = examples
        notes.append(f"{examples:,} training examples counted from {config.data.train}'s lines, one a row")
    return DataFacts(tokens, examples, rows, seq_len, loss_fraction, packing_efficiency, tuple(notes))


def _examples_from_lines(config: Config) -> int:
    """Non-empty lines of data.train, less the held-out share when no data.eval is given."""
    with config.data.train.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    held_out = 0 if config.data.eval is not None else max(1, round(lines * config.data.eval_fraction))
    return max(lines - held_out, 1)


def _read_report(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError([f"{path}: unreadable data report ({exc}); rerun `loraforge prepare`"], str(path)) from exc
    return report if isinstance(report, dict) else None


def _tokens_from_file_size(path: Path) -> int | None:
    return int(path.stat().st_size / CHARS_PER_TOKEN) if path.is_file() else None


def resolve_precision(config: Config, tier: Tier) -> Precision:
    """qlora -> nf4; auto -> bf16 on GPUs and on CPUs with native bf16, else fp32 (as train does)."""
    if config.lora.variant == "qlora":
        return "nf4"
    if config.train.precision != "auto":
        return config.train.precision
    if tier.is_gpu or fast_bf16_available("cpu"):
        return "bf16"
    return "fp32"


def flops_per_token(shape: ModelShape, trainable: int, step: StepShape) -> float:
    """Forward 2N, backward to the inputs 2N (frozen weights get no weight gradient), the adapters'
    forward and both backward matmuls 6 per adapter weight, and causal attention: QK^T and AV cost
    4 x context x q_dim forward with an average context of seq_len/2, backward twice that.
    Backward runs through the adapted layers only (lora.top_layers); checkpointing recomputes those."""
    depth = step.backward_layers(shape) / max(shape.layers, 1)
    head = shape.lm_head_params * step.loss_fraction
    attention_forward = 2 * step.seq_len * shape.q_dim * shape.layers
    forward = 2 * (shape.linear_params + head) + 2 * trainable + attention_forward
    backward = 2 * (shape.linear_params * depth + head) + 4 * trainable + 2 * attention_forward * depth
    recompute = 2 * (shape.linear_params * depth + head) + 2 * trainable + attention_forward * depth
    if not step.gradient_checkpointing:
        recompute = 0
    return float(forward + backward + recompute)


def plan_run(config: Config, tier: Tier, tokens: int | None = None, shape: ModelShape | None = None) -> Plan:
    """Count, size, time and price the run `config` describes, on `tier`."""
    shape = shape or model_shape(config.base)
    problem = top_layers_problem(config.lora.top_layers, shape.layers)
    if problem:
        raise ConfigError([problem], "plan")
    by_module = trainable_by_module(shape, config.lora)
    trainable = sum(by_module.values())
    groups = target_groups(shape, config.lora.targets)
    data = read_data_facts(config, shape, tokens)
    precision = resolve_precision(config, tier)
    step = StepShape(
        precision=precision,
        micro_batch_size=config.train.micro_batch_size,
        seq_len=data.seq_len,
        loss_fraction=data.loss_fraction,
        dropout=config.lora.dropout,
        gradient_checkpointing=config.train.gradient_checkpointing,
        on_gpu=tier.is_gpu,
        packing=config.data.packing,
        lora_r=config.lora.r,
        variant=config.lora.variant,
        top_layers=config.lora.top_layers,
    )
    steps = None
    if data.examples is not None and data.rows is not None:
        steps = step_size(data.examples, data.rows, config.train.micro_batch_size, config.train.grad_accum)
        step = replace(step, micro_batch_size=steps.micro_batch_size)
    gpus = gpus_needed(shape, groups, trainable, step, tier)
    memory = _per_gpu(memory_breakdown(shape, groups, trainable, step), gpus)
    fits = memory["total"] <= tier.usable_bytes
    per_token = flops_per_token(shape, trainable, step)
    processed = _processed_tokens(config, data, step, steps)
    total_flops = per_token * processed if processed is not None else None
    hours = None if total_flops is None else total_flops / (tier.peak_tflops * 1e12 * tier.utilisation * gpus) / 3600
    return Plan(
        base=config.base,
        architecture=shape.architecture,
        tier=tier,
        gpus=gpus,
        precision=precision,
        step=step,
        trainable_params=trainable,
        trainable_by_module=by_module,
        base_params=shape.total_params,
        adapter_bytes=trainable * ADAPTER_BYTES,
        memory=memory,
        activations_by_checkpointing={
            "off": memory_breakdown(shape, groups, trainable, replace(step, gradient_checkpointing=False))[
                "activations"
            ],
            "on": memory_breakdown(shape, groups, trainable, replace(step, gradient_checkpointing=True))["activations"],
        },
        fits=fits,
        max_micro_batch=_max_micro_batch(shape, groups, trainable, step, tier, gpus),
        tokens=data.tokens,
        flops_per_token=per_token,
        total_flops=total_flops,
        hours=hours,
        cost_usd=None if hours is None else hours * gpus * tier.usd_per_hour,
        recommendation=recommend(config, shape, groups, trainable, step, data.examples),
        steps=steps,
        optimizer_steps=_optimizer_steps(config, data, steps),
        epochs=config.train.epochs,
        assumptions=list(data.assumptions),
    )


def _per_gpu(memory: dict[str, int], gpus: int) -> dict[str, int]:
    """FSDP shards weights, adapter, gradients and optimizer state over `gpus`; activations are per GPU."""
    if gpus == 1:
        return memory
    sharded = {k: v // gpus if k in {"weights", "adapter", "gradients", "optimizer"} else v for k, v in memory.items()}
    sharded["total"] = sum(v for k, v in sharded.items() if k != "total")
    return sharded


def _max_micro_batch(
    shape: ModelShape, groups: list[LinearGroup], trainable: int, step: StepShape, tier: Tier, gpus: int
) -> int:
    """The largest micro-batch whose peak fits the tier (0: not even one sequence fits)."""
    fixed = static_bytes(shape, trainable, step.precision) // gpus
    best = 0
    for size in range(1, MAX_MICRO_BATCH_SEARCH + 1):
        if fixed + dynamic_bytes(shape, groups, replace(step, micro_batch_size=size)) > tier.usable_bytes:
            break
        best = size
    return best


def _optimizer_steps(config: Config, data: DataFacts, steps: StepSize | None) -> int | None:
    if steps is None or data.rows is None:
        return None
    total = steps.steps(data.rows, config.train.epochs)
    return total if config.train.max_steps is None else min(total, config.train.max_steps)


def _processed_tokens(config: Config, data: DataFacts, step: StepShape, steps: StepSize | None) -> float | None:
    """Tokens the GPU computes on: epochs over the data, padding included, capped by max_steps."""
    if data.tokens is None:
        return None
    processed = data.tokens * config.train.epochs / max(data.packing_efficiency, 1e-6)
    if config.train.max_steps is not None and steps is not None:
        cap = config.train.max_steps * steps.rows_per_step * step.seq_len
        processed = min(processed, cap)
    return math.ceil(processed)
