"""Calibrate `loraforge plan`'s memory estimate against measured peaks on CPU.

For each base (the tiny test Llama and SmolLM2-135M) and three micro-batch sizes, a fresh
subprocess builds the model from its config.json (random weights: the bytes are what matter),
attaches LoRA with loraforge.models.attach_lora, fuses its layers as the train loop does
(train.fused_lora), and runs two optimizer steps of the real train path (train.loss.TokenLossSum
forward, backward, AdamW from train.optim). Measured peak = VmHWM at the end minus VmRSS just
before the model was built (imports excluded).
glibc is told to serve every allocation over 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_), so freed
tensors leave the process at once and VmHWM tracks live tensor bytes, the way
torch.cuda.max_memory_allocated does on a GPU; without it glibc keeps freed heap pages and the
high-water mark depends on allocation order.

    python bench/plan_calibration.py [--quick] [--out docs/plan_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TINY = {  # tests/tiny.py's model, with a real vocabulary size so the head is not negligible
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    "max_position_embeddings": 4096, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
}  # fmt: skip
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
}  # fmt: skip
CASES: list[tuple[str, dict[str, Any], int, list[int]]] = [
    ("tiny", TINY, 2048, [4, 8, 16]),
    ("smollm2-135m", SMOLLM2, 512, [1, 2, 4]),
]

CHILD = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from loraforge.config import LoraSpec, TrainSpec
from loraforge.models import attach_lora
from loraforge.train.fused_lora import fuse_lora_layers
from loraforge.train.loss import TokenLossSum
from loraforge.train.optim import build_optimizer

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

args = json.loads(sys.argv[1])
torch.manual_seed(0)
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args["precision"]]
config = AutoConfig.from_pretrained(args["dir"])
config._attn_implementation = "sdpa"
before = rss("VmRSS")
model = AutoModelForCausalLM.from_config(config).to(dtype)
for p in model.parameters():
    p.requires_grad_(False)
peft_model = attach_lora(model, LoraSpec(dropout=args["dropout"]))
fuse_lora_layers(peft_model)  # as the train loop does
if args["checkpointing"]:
    peft_model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
peft_model.train()
loss_module = TokenLossSum(peft_model)
optimizer = build_optimizer(peft_model, TrainSpec())
ids = torch.randint(0, config.vocab_size, (args["micro_batch_size"], args["seq_len"]))
for _ in range(2):
    loss = loss_module(input_ids=ids, labels=ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print(json.dumps({"peak_bytes": rss("VmHWM") - before}))
"""


def measure(model_dir: Path, precision: str, micro_batch_size: int, seq_len: int, dropout: float, ckpt: bool) -> int:
    args = {"dir": str(model_dir), "precision": precision, "micro_batch_size": micro_batch_size,
            "seq_len": seq_len, "dropout": dropout, "checkpointing": ckpt}  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def predict(model_dir: Path, precision: str, micro_batch_size: int, seq_len: int, dropout: float, ckpt: bool) -> int:
    from loraforge.config import LoraSpec
    from loraforge.plan.memory import StepShape, memory_breakdown
    from loraforge.plan.shapes import model_shape, target_groups, trainable_by_module

    spec = LoraSpec(dropout=dropout)
    shape = model_shape(str(model_dir))
    step = StepShape(precision, micro_batch_size, seq_len, 1.0, dropout, ckpt, False, False, spec.r, spec.variant)  # type: ignore[arg-type]
    trainable = sum(trainable_by_module(shape, spec).values())
    return memory_breakdown(shape, target_groups(shape, spec.targets), trainable, step)["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fp32 with dropout only")
    parser.add_argument("--checkpointing-only", action="store_true", help="only the gradient-checkpointing rows")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    settings = [("fp32", 0.05, False)]
    if not args.quick:
        settings += [("bf16", 0.05, False), ("fp32", 0.0, False), ("fp32", 0.05, True)]
    if args.checkpointing_only:
        settings = [("fp32", 0.05, True)]
    rows = []
    print("| base | precision | dropout | checkpointing | seq | micro-batch | predicted MiB | measured MiB | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, seq_len, sizes in CASES:
            model_dir = Path(tmp) / name
            model_dir.mkdir()
            (model_dir / "config.json").write_text(json.dumps(config))
            for precision, dropout, ckpt in settings:
                for mb in sizes:
                    predicted = predict(model_dir, precision, mb, seq_len, dropout, ckpt)
                    measured = measure(model_dir, precision, mb, seq_len, dropout, ckpt)
                    error = (predicted - measured) / measured
                    rows.append({"base": name, "precision": precision, "dropout": dropout, "checkpointing": ckpt,
                                 "seq_len": seq_len, "micro_batch_size": mb, "predicted_bytes": predicted,
                                 "measured_bytes": measured, "error": round(error, 4)})  # fmt: skip
                    cells = [name, precision, dropout, "on" if ckpt else "off", seq_len, mb,
                             f"{predicted / 2**20:,.0f}", f"{measured / 2**20:,.0f}", f"{error:+.1%}"]  # fmt: skip
                    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    if args.out is not None:
        from loraforge.files import write_json_atomic

        write_json_atomic(args.out, rows)


if __name__ == "__main__":
    main()
