"""The train stage: one readable loop over PEFT adapters, checkpoints, metrics and the loss plot."""

from loraforge.train.batches import BatchPlan
from loraforge.train.checkpoint import LoopState, complete_checkpoints, resume_point
from loraforge.train.export import export_adapter, save_initial_adapter
from loraforge.train.loop import StepPlan, TrainResult, evaluate_loss, plan_steps, train
from loraforge.train.metrics import MetricsLog, read_metrics
from loraforge.train.optim import build_optimizer, build_scheduler
from loraforge.train.plot import plot_losses
from loraforge.train.precision import qlora_quantization_config, resolve_base_dtype

__all__ = [
    "BatchPlan",
    "LoopState",
    "MetricsLog",
    "StepPlan",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "complete_checkpoints",
    "evaluate_loss",
    "export_adapter",
    "plan_steps",
    "plot_losses",
    "qlora_quantization_config",
    "read_metrics",
    "resolve_base_dtype",
    "resume_point",
    "save_initial_adapter",
    "train",
]
