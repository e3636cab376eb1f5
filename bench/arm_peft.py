"""B0: a plain PEFT loop, as most tutorials write it: fp32, padded batches, HF forward loss."""

from __future__ import annotations

import time

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
    step_rows,
    sync,
    tokenize,
    warmup_steps,
)
from peft import get_peft_model
from transformers import get_cosine_schedule_with_warmup


def main() -> None:
    parser = arm_parser()
    add_max_seconds(parser)
    args = parser.parse_args()
    set_threads()
    tokenizer = load_bench_tokenizer(args)
    model = build_model(args.model, torch.float32, args.device)
    torch.manual_seed(SEED)
    model = get_peft_model(model, peft_lora_config())
    model.train()
    total_steps = args.steps + args.warmup_steps
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps(total_steps), total_steps)
    rows = bench_rows()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    clock, losses = StepClock(args.warmup_steps, args.max_seconds), []
    for step in range(total_steps):
        batch = [tokenize(tokenizer, r) for r in rows[step_rows(step, args.rows_per_step)]]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=args.device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=args.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=args.device)
        sync(args.device)
        start = time.perf_counter()
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # waits for the GPU: the step is over
        if clock.record(step, time.perf_counter() - start):
            break
    tokens = clock.real_tokens(tokenizer, rows, args.rows_per_step)
    result_line({"arm": "B0", "tokens": tokens, "seconds": clock.seconds, "tokens_per_s": tokens / clock.seconds,
                 "steps": len(clock.timed), "peak_mem": peak_memory_bytes(args.device), "losses": losses})  # fmt: skip


if __name__ == "__main__":
    main()
