"""The train stage on the real SmolLM2-135M-Instruct through `loraforge train`'s library call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from loraforge.config import validate_config
from loraforge.models import resolve_base
from loraforge.pipeline.train_run import run_training
from loraforge.train import qlora_quantization_config

pytestmark = pytest.mark.slow
ALIAS = "smollm2-135m-instruct"
TRAIN = Path(__file__).parents[1] / "examples" / "support_tickets" / "train.jsonl"


def _config(tmp_path: Path, n_rows: int, **train: object) -> object:
    rows = TRAIN.read_text().splitlines()[:n_rows]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    raw = {
        "base": ALIAS,
        "output": str(tmp_path / "run"),
        "data": {"train": str(tmp_path / "train.jsonl"), "eval_fraction": 0.1, "max_seq_len": 256},
        "lora": {"variant": train.pop("variant", "lora")},
        "train": {"micro_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_ratio": 0.0, **train},
    }
    return validate_config(raw)


def test_eval_loss_falls_on_support_tickets(tmp_path: Path) -> None:
    run = run_training(_config(tmp_path, 96, max_steps=8, eval_every=0.25))  # type: ignore[arg-type]
    assert len(run.result.eval_losses) >= 2
    assert run.result.best_eval_loss < run.result.eval_losses[0][1]
    assert (tmp_path / "run" / "loss.png").is_file()


@pytest.mark.parametrize("variant", ["dora", "qlora"])
def test_variant_adapter_loads_in_plain_peft(variant: str, tmp_path: Path) -> None:
    run = run_training(_config(tmp_path, 40, max_steps=2, variant=variant))  # type: ignore[arg-type]
    quant = {"quantization_config": qlora_quantization_config(torch.float32)} if variant == "qlora" else {}
    base = AutoModelForCausalLM.from_pretrained(str(resolve_base(ALIAS)), dtype=torch.float32, **quant)
    plain = PeftModel.from_pretrained(base, str(run.adapter_dir)).eval()
    ids = torch.tensor([[1, 504, 3458, 314, 260, 3575, 282, 4649, 47]])
    with torch.no_grad():
        with_adapter = plain(input_ids=ids).logits
        with plain.disable_adapter():
            without = plain(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without, atol=1e-4)  # the trained adapter is in the path
    assert run.manifest["base"]["fingerprint"] == run.base_fingerprint
