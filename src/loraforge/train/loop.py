"""The training loop: one visible `for` loop over optimizer steps.

Read `train` top to bottom: plan the steps, build optimizer and schedule, resume or start fresh,
then per step accumulate gradients over micro-batches, clip, step, log; every `eval_every` epochs
measure eval loss, keep the best checkpoint, and stop early when eval loss stops improving.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm
from transformers import PreTrainedModel, set_seed

from loraforge.config import TrainSpec
from loraforge.data import count_loss_tokens
from loraforge.errors import TrainError
from loraforge.train.batches import BatchPlan
from loraforge.train.checkpoint import (
    ADAPTER_SUBDIR,
    ADAPTER_WEIGHTS,
    CHECKPOINTS_SUBDIR,
    LoopState,
    checkpoint_dir,
    load_checkpoint,
    prune_checkpoints,
    remove_partial,
    resume_point,
    rng_state,
    save_checkpoint,
)
from loraforge.train.fused_lora import fuse_lora_layers
from loraforge.train.loss import TokenLossSum, anchored_tokens, mean_replay_kl
from loraforge.train.metrics import MetricsLog
from loraforge.train.optim import build_optimizer, build_scheduler, trainable_parameters
from loraforge.train.plot import plot_losses
from loraforge.train.preference import STAT_NAMES, PreferenceLoss, mean_stats


@dataclass(frozen=True)
class StepPlan:
    micro_batches_per_epoch: int
    total_micro_batches: int
    total_steps: int
    eval_every_steps: int
    save_every_steps: int

    def epoch_at(self, micro_index: int) -> float:
        return micro_index / self.micro_batches_per_epoch


@dataclass
class TrainResult:
    """What a run produced. On return, the model holds the best checkpoint's adapter weights."""

    out_dir: Path
    best_step: int
    best_eval_loss: float
    best_checkpoint: Path
    final_step: int
    total_steps: int
    stop_reason: str
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = 0.0
    resumed_from: int | None = None

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @property
    def plot_path(self) -> Path:
        return self.out_dir / "loss.png"


def grad_accum(spec: TrainSpec) -> int:
    """Micro-batches per step; "auto" is resolved from the data before the loop (pipeline.train_run)."""
    if not isinstance(spec.grad_accum, int):
        raise TrainError(
            "train(spec=...): spec.grad_accum is 'auto'; resolve it with loraforge.batching.step_size and pass "
            "spec.model_copy(update={'grad_accum': ..., 'micro_batch_size': ...})"
        )
    return spec.grad_accum


def plan_steps(batches: BatchPlan, spec: TrainSpec) -> StepPlan:
    per_epoch = batches.micro_batches_per_epoch
    total_micro = max(1, round(spec.epochs * per_epoch))
    total_steps = math.ceil(total_micro / grad_accum(spec))
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    steps_per_epoch = per_epoch / grad_accum(spec)
    eval_every = max(1, round(spec.eval_every * steps_per_epoch))
    save_every = eval_every if spec.save_every is None else max(1, round(spec.save_every * steps_per_epoch))
    return StepPlan(per_epoch, total_micro, total_steps, eval_every, save_every)


@dataclass
class _Run:
    """Everything one training run holds, so the helpers below take one argument, not ten."""

    model: PeftModel
    loss_module: torch.nn.Module  # TokenLossSum or PreferenceLoss, DDP-wrapped when several processes run
    loss_sum: TokenLossSum | PreferenceLoss  # the same module unwrapped: its last_kl_sum / last_stats are read
    batches: BatchPlan
    spec: TrainSpec
    plan: StepPlan
    optimizer: Optimizer
    scheduler: LRScheduler
    metrics: MetricsLog
    accelerator: Accelerator
    out_dir: Path
    identity: dict[str, Any]
    tokens_seen: int = 0
    seconds: float = 0.0

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / CHECKPOINTS_SUBDIR

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / max(self.seconds, 1e-9)


def train(
    model: PeftModel,
    batches: BatchPlan,
    spec: TrainSpec,
    out_dir: Path,
    *,
    identity: dict[str, Any],
    resume: bool = False,
    loraplus_lr_ratio: float | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """Train the adapter of `model` on `batches`; write checkpoints, metrics and loss.png under `out_dir`.

    `identity` (resolved config, base fingerprint, data hash) is stored in every checkpoint; a
    resume whose identity differs is refused. `loraplus_lr_ratio` switches to PEFT's LoRA+ optimizer.
    """
    run = _setup(model, batches, spec, out_dir, identity, loraplus_lr_ratio, accelerator or Accelerator())
    plan = run.plan
    state = _start_or_resume(run, resume)
    resumed_from = state.step or None
    main = run.accelerator.is_main_process
    progress = tqdm(total=plan.total_steps, initial=state.step, desc="train", unit="step", disable=not main)
    already_done = state.stop_reason is not None or state.step >= plan.total_steps  # its stop is logged
    model.train()
    while state.step < plan.total_steps and state.stop_reason is None:
        started = time.perf_counter()
        stats = _optimizer_step(run, state)
        _guard(stats.loss, stats.grad_norm, state.step + 1, spec)
        run.scheduler.step()
        state.step += 1
        state.micro_index = min(state.step * grad_accum(spec), plan.total_micro_batches)
        state.epoch = plan.epoch_at(state.micro_index)
        run.seconds += time.perf_counter() - started
        run.tokens_seen += stats.n_tokens
        last = state.step == plan.total_steps
        if state.step % spec.log_every == 0 or last:
            kl = {"replay_kl": stats.replay_kl} if stats.replay_kl is not None else {}  # mean KL per anchored token
            pairs = stats.preference or {}  # dpo: margin, accuracy, chosen_drift, rejected_drift per pair
            run.metrics.log("train", state.step, epoch=round(state.epoch, 4), loss=stats.loss,
                            grad_norm=stats.grad_norm, **kl, **pairs, lr=run.scheduler.get_last_lr()[0],
                            tokens_per_s=round(run.tokens_per_s, 1))  # fmt: skip
        improved = False
        if state.step % plan.eval_every_steps == 0 or last:
            improved, state.stop_reason = _evaluate_and_track(run, state)
        progress.update(1)
        progress.set_postfix(epoch=f"{state.epoch:.2f}", loss=f"{stats.loss:.4f}", eval=_last_eval(state),
                             tok_s=f"{run.tokens_per_s:.0f}")  # fmt: skip
        # the run's end (last step or early stop) is saved with its stop reason, so a resume of it
        # goes straight to the same best adapter instead of training on
        checkpoint_due = improved or last or state.stop_reason is not None or state.step % plan.save_every_steps == 0
        if checkpoint_due:
            _save(run, state)
    progress.close()
    stop_reason = state.stop_reason or f"reached {plan.total_steps} steps"
    if main and not already_done:
        run.metrics.log("stop", state.step, reason=stop_reason, best_step=state.best_step,
                        best_eval_loss=state.best_eval_loss)  # fmt: skip
    if main:
        tqdm.write(stop_reason)
    return _finish(run, state, stop_reason, resumed_from)


def _setup(
    model: PeftModel,
    batches: BatchPlan,
    spec: TrainSpec,
    out_dir: Path,
    identity: dict[str, Any],
    loraplus_lr_ratio: float | None,
    accelerator: Accelerator,
) -> _Run:
    plan = plan_steps(batches, spec)
    if spec.gradient_checkpointing:
        base = cast(PreTrainedModel, model.get_base_model())
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fuse_lora_layers(model)  # same math as PEFT's forward, fewer elementwise passes (docs/PERFORMANCE.md)
    loss_sum: TokenLossSum | PreferenceLoss
    if spec.method == "dpo":
        loss_sum = PreferenceLoss(model, spec.dpo.loss, spec.dpo.resolved_beta, spec.dpo.simpo_gamma)
    else:
        loss_sum = TokenLossSum(model, replay_kl=spec.replay_kl)
    loss_module = accelerator.prepare_model(loss_sum)  # the base forward for the KL runs inside its forward
    optimizer = build_optimizer(model, spec, loraplus_lr_ratio)
    scheduler = build_scheduler(optimizer, spec, plan.total_steps)
    metrics = MetricsLog(out_dir, spec.log_to, write=accelerator.is_main_process)
    return _Run(
        model, loss_module, loss_sum, batches, spec, plan, optimizer, scheduler, metrics, accelerator, out_dir, identity
    )


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step measured, over all its micro-batches and processes."""

    loss: float  # mean loss per unit: per loss token (sft), per pair (dpo)
    grad_norm: float
    n_tokens: int  # tokens seen, padding excluded
    replay_kl: float | None  # mean KL per anchored token; None with train.replay_kl off or no anchored token
    preference: dict[str, float] | None = None  # dpo: per-pair margin, accuracy, chosen and rejected drift


def _optimizer_step(run: _Run, state: LoopState) -> StepStats:
    """Accumulate gradients over the step's micro-batches, clip, and step the optimizer."""
    accelerator, spec = run.accelerator, run.spec
    first = state.step * grad_accum(spec)
    last = min(first + grad_accum(spec), run.plan.total_micro_batches)
    micro = run.batches.step_batches(first, last)
    counts = torch.tensor(
        [sum(run.loss_sum.units(b) for b in micro), sum(_n_tokens(b) for b in micro), anchored_tokens(micro)]
    )
    loss_tokens, n_tokens, anchored = (int(v) for v in accelerator.reduce(counts.to(accelerator.device), "sum"))
    # Every token of the optimizer step weighs the same: the sum over all micro-batches and processes
    # divided by their total count, not a mean of per-batch means (short batches would weigh more).
    # The replay KL is part of that sum, so it is normalised the same way. DDP averages gradients
    # over processes, hence the num_processes factor.
    scale = accelerator.num_processes / max(loss_tokens, 1)
    preference = isinstance(run.loss_sum, PreferenceLoss)
    # summed loss, summed replay KL, then (dpo) the summed pair statistics of PreferenceLoss.last_stats
    sums = torch.zeros(2 + (len(STAT_NAMES) if preference else 0), device=accelerator.device)
    for i, batch in enumerate(micro):
        sync = i == len(micro) - 1  # all-reduce gradients once, after the last micro-batch
        with contextlib.nullcontext() if sync else accelerator.no_sync(run.loss_module):
            summed = run.loss_module(**{k: v.to(accelerator.device) for k, v in batch.items()})
            (summed * scale).backward()
        sums[0] += summed.detach()
        sums[1] += run.loss_sum.last_kl_sum.to(sums.device)
        if isinstance(run.loss_sum, PreferenceLoss):
            sums[2:] += run.loss_sum.last_stats.to(sums.device)
    grad_norm = accelerator.clip_grad_norm_(trainable_parameters(run.model), spec.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    total, kl_total, *pair_sums = accelerator.reduce(sums, reduction="sum").tolist()
    replay_kl = mean_replay_kl(kl_total, anchored) if spec.replay_kl is not None else None
    pairs = mean_stats(pair_sums, loss_tokens) if preference else None
    return StepStats(total / max(loss_tokens, 1), float(grad_norm), n_tokens, replay_kl, pairs)


def _n_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")  # 2D padding mask, or packed rows' 4D mask (every slot counted)
    return int(mask.sum()) if mask is not None and mask.dim() == 2 else batch["input_ids"].numel()


def _guard(loss: float, grad_norm: float, step: int, spec: TrainSpec) -> None:
    """Stop on a diverged loss or an adapter that receives no gradient, naming the likely cause."""
    if not math.isfinite(loss) or not math.isfinite(grad_norm):
        raise TrainError(
            f"step {step}: train loss is {loss} and gradient norm {grad_norm} (not finite). Likely causes: "
            f"a learning rate too high for this base (train.lr={spec.lr}; try {spec.lr / 4:g}), bf16 overflow "
            "(try train.precision=fp32), or a base/adapter weight that is already NaN (check the base file)"
        )
    if grad_norm == 0.0:
        raise TrainError(
            f"step {step}: the adapter's gradient norm is 0, so training cannot change it (a no-op adapter). "
            "Likely causes: both LoRA matrices initialised to zero, lora.targets naming layers the loss does not "
            "reach, or every label masked (check loss-token counts in OUTPUT/data_report.json)"
        )


@torch.no_grad()
def evaluate_loss(loss_module: torch.nn.Module, batches: BatchPlan, accelerator: Accelerator) -> float:
    """Mean loss per unit over the eval rows: per loss token (sft), per pair (dpo); summed over all
    processes, then divided by the count."""
    return evaluate(loss_module, batches, accelerator)[0]


@torch.no_grad()
def evaluate(
    loss_module: torch.nn.Module, batches: BatchPlan, accelerator: Accelerator
) -> tuple[float, dict[str, float]]:
    """evaluate_loss and, for a PreferenceLoss, the eval pairs' mean statistics (accuracy: the share of
    held-out pairs where the policy prefers the chosen answer more than the reference does)."""
    was_training = loss_module.training
    loss_module.eval()
    module = accelerator.unwrap_model(loss_module)  # no DDP hooks: eval has no backward
    preference = isinstance(module, PreferenceLoss)
    totals = torch.zeros(
        2 + (len(module.last_stats) if preference else 0), dtype=torch.float64, device=accelerator.device
    )
    for batch in batches.eval_batches():
        totals[0] += module(**{k: v.to(accelerator.device) for k, v in batch.items()}).double()
        totals[1] += module.units(batch) if isinstance(module, PreferenceLoss) else count_loss_tokens(batch["labels"])
        if isinstance(module, PreferenceLoss):
            totals[2:] += module.last_stats.to(totals.device).double()
    loss_module.train(was_training)
    summed, count, *pair_sums = accelerator.reduce(totals, reduction="sum").tolist()
    return summed / max(count, 1.0), mean_stats(pair_sums, int(count)) if preference else {}


def _evaluate_and_track(run: _Run, state: LoopState) -> tuple[bool, str | None]:
    """Eval, update best/patience, redraw loss.png; return (improved, early-stop reason or None)."""
    eval_loss, pair_stats = evaluate(run.loss_module, run.batches, run.accelerator)
    state.eval_losses.append((state.step, eval_loss))
    improved = state.best_eval_loss is None or eval_loss < state.best_eval_loss
    if improved:
        state.best_eval_loss, state.best_step, state.evals_since_best = eval_loss, state.step, 0
    else:
        state.evals_since_best += 1
    if run.accelerator.is_main_process:
        held_out = {f"eval_{name}": value for name, value in pair_stats.items()}  # dpo: eval_accuracy, ...
        run.metrics.log("eval", state.step, epoch=round(state.epoch, 4), eval_loss=eval_loss, best=improved, **held_out)
        plot_losses(run.metrics.records, run.out_dir / "loss.png", best_step=state.best_step)
    patience = run.spec.early_stopping_patience
    if patience and state.evals_since_best >= patience:
        return improved, (
            f"early stop at step {state.step}: eval loss has not improved for {patience} evals "
            f"(best {state.best_eval_loss:.4f} at step {state.best_step}; now {eval_loss:.4f})"
        )
    return improved, None


def _save(run: _Run, state: LoopState) -> None:
    rng_states = gather_object([rng_state()])  # one per process: dropout masks differ by rank
    if run.accelerator.is_main_process:
        save_checkpoint(run.checkpoints, run.model, run.optimizer, run.scheduler, state, run.identity, rng_states)
        prune_checkpoints(run.checkpoints, run.spec.keep_checkpoints, state.best_step)
    run.accelerator.wait_for_everyone()


def _start_or_resume(run: _Run, resume: bool) -> LoopState:
    """Fresh state, or the newest complete checkpoint restored (after checking nothing changed)."""
    newest = resume_point(run.out_dir, run.identity, resume)
    main = run.accelerator.is_main_process
    if newest is None:
        state = LoopState()
        # after the adapter init (same on every process), each process draws its own dropout masks:
        # with one seed everywhere, every rank would drop the same units of its rows
        set_seed(run.spec.seed + run.accelerator.process_index)
    else:
        state = load_checkpoint(newest, run.model, run.optimizer, run.scheduler, rank=run.accelerator.process_index)
        if main:
            tqdm.write(f"resuming from {newest} (step {state.step}, epoch {state.epoch:.2f})")
    if main:
        remove_partial(run.checkpoints)
        run.metrics.truncate_after(state.step)  # a fresh run starts an empty metrics.jsonl
    run.accelerator.wait_for_everyone()
    return state


def _finish(run: _Run, state: LoopState, stop_reason: str, resumed_from: int | None) -> TrainResult:
    run.accelerator.wait_for_everyone()
    if state.best_step is None or state.best_eval_loss is None:
        raise TrainError(f"{run.out_dir}: no eval loss was recorded, so there is no best checkpoint to keep")
    best = checkpoint_dir(run.checkpoints, state.best_step)
    set_peft_model_state_dict(run.model, load_file(str(best / ADAPTER_SUBDIR / ADAPTER_WEIGHTS)))
    run.model.eval()
    return TrainResult(
        out_dir=run.out_dir,
        best_step=state.best_step,
        best_eval_loss=state.best_eval_loss,
        best_checkpoint=best,
        final_step=state.step,
        total_steps=run.plan.total_steps,
        stop_reason=stop_reason,
        train_losses=[(r["step"], r["loss"]) for r in run.metrics.records if r.get("event") == "train"],
        eval_losses=list(state.eval_losses),
        tokens_per_s=run.tokens_per_s,
        resumed_from=resumed_from,
    )


def _last_eval(state: LoopState) -> str:
    return f"{state.eval_losses[-1][1]:.4f}" if state.eval_losses else "-"
