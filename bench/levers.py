"""One lever at a time on SmolLM2 with the demo data: forward+backward of packed micro-batches
through the loop's loss path, timed in process CPU time (robust on a shared, loaded machine).

  python bench/levers.py --threads 1 [--full] [--fuse] [--dtype fp32] [--mb 2] [--seq 256] [--share-prefix]
                         [--top-layers N]

With --share-prefix the rows hold fewer tokens than their examples: compare examples per second.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from loraforge.config import DataSpec, LoraSpec
from loraforge.data import collate_packed, pack_examples, packing_efficiency, prepare_data
from loraforge.data.packing import summed_token_loss
from loraforge.models import attach_lora, load_base
from loraforge.train.fused_lora import fuse_lora_layers
from loraforge.train.loss import TokenLossSum

DEMO = Path(__file__).resolve().parents[1] / "examples" / "support_tickets" / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--mb", type=int, default=2, help="packed rows per micro-batch")
    parser.add_argument("--seq", type=int, default=256, help="packed row length")
    parser.add_argument("--steps", type=int, default=2, help="timed micro-batches after one warmup")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--full", action="store_true", help="full logits at every position (the old path)")
    parser.add_argument("--fuse", action="store_true", help="fused LoRA layers")
    parser.add_argument("--share-prefix", action="store_true", help="examples behind one copy of their shared prefix")
    parser.add_argument("--top-layers", type=int, default=None, help="adapt only the last N layers (lora.top_layers)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base("smollm2-135m-instruct", dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    spec = DataSpec(train=DEMO, pii="off", dedup=False, leakage_check=False)
    data = prepare_data(spec, base.tokenizer, seed=0, context_length=2048, out_dir=None, cache_dir=None)
    rows = pack_examples(data.train, data.max_seq_len, seed=0, pack_len=args.seq, share_prefix=args.share_prefix)
    print(f"{len(rows)} packed rows, packing efficiency {packing_efficiency(rows, args.seq):.3f}, "
          f"{len(data.train) / len(rows):.2f} examples a row")  # fmt: skip
    torch.manual_seed(0)
    model = attach_lora(base.model, LoraSpec(top_layers=args.top_layers))
    model.train()
    if args.fuse:
        fuse_lora_layers(model)
    loss_module = TokenLossSum(model)
    seconds, wall, tokens, examples = 0.0, 0.0, 0, 0
    for i in range(args.steps + 1):
        chunk = rows[i * args.mb : (i + 1) * args.mb]
        batch = collate_packed(chunk)
        started, wall_started = time.process_time(), time.perf_counter()
        if args.full:
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            summed_token_loss(logits, batch["labels"]).backward()
        else:
            loss_module(**batch).backward()
        if i:
            seconds += time.process_time() - started
            wall += time.perf_counter() - wall_started
            tokens += sum(len(row.input_ids) for row in chunk)  # real tokens: padding excluded
            examples += sum(len(row.lengths) for row in chunk)
    print(f"{vars(args)}: {tokens / seconds:.0f} real tokens per CPU-second, {tokens / wall:.0f} per wall-second, "
          f"{examples / wall:.2f} examples per wall-second")  # fmt: skip


if __name__ == "__main__":
    main()
