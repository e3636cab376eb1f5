"""AdamW over the adapter parameters only (or PEFT's LoRA+ optimizer), and the LR schedule."""

from __future__ import annotations

import math

import torch
from peft import PeftModel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from loraforge.config import TrainSpec
from loraforge.errors import TrainError


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError("the model has no trainable parameters; attach a LoRA adapter before training")
    return params


def build_optimizer(model: PeftModel, spec: TrainSpec, loraplus_lr_ratio: float | None = None) -> Optimizer:
    """AdamW on adapter weights. With `loraplus_lr_ratio`, B matrices get lr * ratio (LoRA+)."""
    if loraplus_lr_ratio is not None:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=spec.lr,
            loraplus_lr_ratio=loraplus_lr_ratio,
            weight_decay=spec.weight_decay,
        )
    return torch.optim.AdamW(trainable_parameters(model), lr=spec.lr, weight_decay=spec.weight_decay)


def build_scheduler(optimizer: Optimizer, spec: TrainSpec, total_steps: int) -> LRScheduler:
    """cosine | linear | constant after `warmup_ratio` of the steps (transformers' schedules)."""
    warmup_steps = math.ceil(spec.warmup_ratio * total_steps)
    name = "constant_with_warmup" if spec.scheduler == "constant" else spec.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
