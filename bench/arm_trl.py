"""B1: TRL's SFTTrainer with its defaults (on CPU: bf16 autocast over an fp32 model, gradient
checkpointing, padded batches), given the same LoRA, lr, schedule, rows per step and data order
as every other arm."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch
from common import (
    LR,
    ROWS_PER_STEP,
    SEED,
    arm_parser,
    bench_rows,
    peak_rss_bytes,
    peft_lora_config,
    result_line,
    set_threads,
    step_rows,
    tokenize,
    warmup_steps,
)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


class StepTimer(TrainerCallback):
    """Seconds of the optimizer steps after the warmup ones, and the logged losses."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps, self.started, self.seconds = warmup_steps, 0.0, 0.0
        self.losses: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > self.warmup_steps:
            self.seconds += time.perf_counter() - self.started

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def main() -> None:
    parser = arm_parser()
    args = parser.parse_args()
    set_threads()
    total_steps = args.steps + args.warmup_steps
    rows = bench_rows()[: total_steps * ROWS_PER_STEP]
    # prompt/completion in conversational form: TRL then trains on the completion only, like the other arms
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    timer = StepTimer(args.warmup_steps)
    lora = peft_lora_config()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, use_cpu=True, seed=SEED, learning_rate=LR, lr_scheduler_type="cosine",
            warmup_steps=warmup_steps(total_steps), weight_decay=0.0, per_device_train_batch_size=ROWS_PER_STEP,
            gradient_accumulation_steps=1, max_steps=total_steps, logging_steps=1, save_strategy="no",
            report_to=[], dataloader_drop_last=False, disable_tqdm=True,
        )  # fmt: skip
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora, callbacks=[timer])  # fmt: skip
        # the data order must match the other arms: no shuffling sampler
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
        trainer.train()
    measured = [r for step in range(args.warmup_steps, total_steps) for r in bench_rows()[step_rows(step)]]
    tokens = sum(len(tokenize(tokenizer, r)[0]) for r in measured)
    result_line({"arm": "B1", "tokens": tokens, "seconds": timer.seconds, "tokens_per_s": tokens / timer.seconds,
                 "peak_rss": peak_rss_bytes(), "losses": timer.losses})  # fmt: skip


if __name__ == "__main__":
    main()
