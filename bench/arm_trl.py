"""B1: TRL's SFTTrainer with its defaults (bf16 autocast over a model loaded as TRL loads one, in
fp32; gradient checkpointing; padded batches), given the same LoRA, lr, schedule, rows per step and
data order as every other arm.

B2 (`--fast`, for the GPU): the same trainer as a tuned TRL user runs it: the model in bf16,
`padding_free=True` (each step's rows flattened into one row with position_ids, no padding) and
`use_liger_kernel=True` (Liger's fused RMSNorm, SwiGLU, RoPE and linear cross-entropy). `--no-liger`
leaves Liger out (it needs a GPU; the CPU smoke run uses it).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch
from common import (
    LR,
    SEED,
    StepClock,
    add_max_seconds,
    arm_parser,
    bench_rows,
    build_model,
    load_bench_tokenizer,
    peak_memory_bytes,
    peft_lora_config,
    result_line,
    set_threads,
    sync,
    warmup_steps,
)
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer


class StepTimer(TrainerCallback):
    """Times each optimizer step (the GPU drained at both ends) into a StepClock, stops training when
    the clock says so, and keeps the logged losses."""

    def __init__(self, clock: StepClock, device: str) -> None:
        self.clock, self.device, self.started = clock, device, 0.0
        self.losses: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sync(self.device)
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sync(self.device)
        if self.clock.record(state.global_step - 1, time.perf_counter() - self.started):
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def main() -> None:
    parser = arm_parser()
    parser.add_argument("--fast", action="store_true", help="B2: bf16 model, padding_free, Liger kernels")
    parser.add_argument("--no-liger", action="store_true", help="with --fast: leave Liger out (CPU smoke runs)")
    add_max_seconds(parser)
    args = parser.parse_args()
    set_threads()
    total_steps = args.steps + args.warmup_steps
    rows = bench_rows()[: total_steps * args.rows_per_step]
    # prompt/completion in conversational form: TRL then trains on the completion only, like the other arms
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = load_bench_tokenizer(args)
    model = build_model(args.model, torch.bfloat16 if args.fast else torch.float32, args.device)
    timer = StepTimer(StepClock(args.warmup_steps, args.max_seconds), args.device)
    fast: dict[str, Any] = {}
    if args.fast:
        fast = {"padding_free": True, "max_length": None, "use_liger_kernel": not args.no_liger}
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, use_cpu=args.device == "cpu", seed=SEED, learning_rate=LR, lr_scheduler_type="cosine",
            warmup_steps=warmup_steps(total_steps), weight_decay=0.0, per_device_train_batch_size=args.rows_per_step,
            gradient_accumulation_steps=1, max_steps=total_steps, logging_steps=1, save_strategy="no",
            report_to=[], dataloader_drop_last=False, disable_tqdm=True, **fast,
        )  # fmt: skip
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_lora_config(), callbacks=[timer])  # fmt: skip
        # the data order must match the other arms: no shuffling sampler
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
        trainer.train()
    clock = timer.clock
    tokens = clock.real_tokens(tokenizer, rows, args.rows_per_step)
    result_line({"arm": "B2" if args.fast else "B1", "tokens": tokens, "seconds": clock.seconds,
                 "tokens_per_s": tokens / clock.seconds, "steps": len(clock.timed),
                 "peak_mem": peak_memory_bytes(args.device), "losses": timer.losses})  # fmt: skip


if __name__ == "__main__":
    main()
