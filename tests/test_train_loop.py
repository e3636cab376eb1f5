"""The training loop on the tiny model: loss falls, best checkpoint kept, guards, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_rows import tiny_plan

from loraforge.config import LoraSpec, TrainSpec
from loraforge.data.packing import collate_padded
from loraforge.errors import TrainError
from loraforge.models import attach_lora, load_base
from loraforge.train import BatchPlan, TrainResult, evaluate_loss, train
from loraforge.train.loss import TokenLossSum

FAST = dict(lr=5e-3, warmup_ratio=0.0, micro_batch_size=4, grad_accum=2, precision="fp32")


def _model(base_dir: Path, r: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return attach_lora(load_base(str(base_dir), dtype=dtype).model, LoraSpec(r=r, alpha=2 * r, dropout=0.0))


def _train(base_dir: Path, out: Path, plan: BatchPlan | None = None, **spec: object) -> TrainResult:
    settings = {**FAST, "epochs": 2.0, "eval_every": 0.5, **spec}
    return train(
        _model(base_dir), plan or tiny_plan(base_dir, micro=4), TrainSpec(**settings), out, identity={"run": "t"}
    )


def test_eval_loss_falls_and_the_best_checkpoint_is_kept(tiny_base_dir: Path, tmp_path: Path) -> None:
    result = _train(tiny_base_dir, tmp_path)
    assert result.best_eval_loss < result.eval_losses[0][1]
    assert result.best_checkpoint.is_dir()
    assert min(loss for _, loss in result.eval_losses) == result.best_eval_loss


def test_run_writes_metrics_plot_and_checkpoints(tiny_base_dir: Path, tmp_path: Path) -> None:
    result = _train(tiny_base_dir, tmp_path, keep_checkpoints=1)
    events = [json.loads(line)["event"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "eval", "stop"} <= set(events)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == sorted({f"step-{result.best_step}", f"step-{result.final_step}"})


def test_returned_model_holds_the_best_checkpoint_weights(tiny_base_dir: Path, tmp_path: Path) -> None:
    model = _model(tiny_base_dir)
    plan = tiny_plan(tiny_base_dir, micro=4)
    result = train(model, plan, TrainSpec(**FAST, epochs=2, eval_every=0.5), tmp_path, identity={})
    from accelerate import Accelerator

    assert evaluate_loss(TokenLossSum(model), plan, Accelerator()) == pytest.approx(result.best_eval_loss, rel=1e-6)


def test_max_steps_caps_the_run(tiny_base_dir: Path, tmp_path: Path) -> None:
    result = _train(tiny_base_dir, tmp_path, max_steps=3)
    assert (result.final_step, result.total_steps) == (3, 3)


def test_early_stopping_names_its_reason(tiny_base_dir: Path, tmp_path: Path) -> None:
    # an lr this high overshoots at once, so eval loss never improves on the first eval
    result = _train(tiny_base_dir, tmp_path, lr=0.5, epochs=6, eval_every=0.25, early_stopping_patience=2)
    assert result.stop_reason.startswith("early stop")
    assert "has not improved for 2 evals" in result.stop_reason
    assert result.final_step < result.total_steps


def test_nan_loss_stops_with_the_likely_cause(tiny_base_dir: Path, tmp_path: Path) -> None:
    model = _model(tiny_base_dir)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))
    with pytest.raises(TrainError, match=r"step 1: train loss is nan.*learning rate too high"):
        train(model, tiny_plan(tiny_base_dir, micro=4), TrainSpec(**FAST), tmp_path, identity={})


def test_zero_gradient_stops_as_a_no_op_adapter(tiny_base_dir: Path, tmp_path: Path) -> None:
    model = _model(tiny_base_dir)
    with torch.no_grad():  # A = 0 and B = 0: neither receives a gradient, the adapter can never move
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.zero_()
    with pytest.raises(TrainError, match=r"gradient norm is 0.*no-op adapter.*both LoRA matrices"):
        train(model, tiny_plan(tiny_base_dir, micro=4), TrainSpec(**FAST), tmp_path, identity={})


def test_step_loss_weighs_every_token_equally(tiny_base_dir: Path, tmp_path: Path) -> None:
    plan = tiny_plan(tiny_base_dir, micro=1)
    model = _model(tiny_base_dir)
    loss_module = TokenLossSum(model)
    micro = [plan.train_batch(i) for i in range(4)]
    with torch.no_grad():
        sums = [float(loss_module(**b)) for b in micro]
        counts = [int((b["labels"][:, 1:] != -100).sum()) for b in micro]
    spec = TrainSpec(**{**FAST, "micro_batch_size": 1, "grad_accum": 4, "max_steps": 1, "lr": 1e-9})
    result = train(model, plan, spec, tmp_path, identity={})
    assert result.train_losses[0][1] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    mean_of_means = sum(s / c for s, c in zip(sums, counts, strict=True)) / 4
    assert result.train_losses[0][1] != pytest.approx(mean_of_means, rel=1e-3)


class _OneRowMicroBatches(BatchPlan):
    """Each step's micro-batches cut into one row each, padding dropped (what the benchmark's C arm does)."""

    def step_batches(self, first: int, last: int) -> list[dict[str, torch.Tensor]]:
        rows = []
        for batch in super().step_batches(first, last):
            for i in range(batch["input_ids"].shape[0]):
                length = int(batch["attention_mask"][i].sum())
                rows.append({k: v[i : i + 1, :length] for k, v in batch.items()})
        return rows


def test_one_row_micro_batches_change_memory_not_the_math(tiny_base_dir: Path, tmp_path: Path) -> None:
    rows = tiny_plan(tiny_base_dir)
    plain = BatchPlan(rows.train_rows, rows.eval_rows, collate_padded, micro_batch_size=4, seed=0)
    split = _OneRowMicroBatches(rows.train_rows, rows.eval_rows, collate_padded, micro_batch_size=4, seed=0)
    assert len(split.step_batches(0, 2)) == 8 and all(b["input_ids"].shape[0] == 1 for b in split.step_batches(0, 2))
    spec = TrainSpec(**{**FAST, "max_steps": 4, "eval_every": 0.5})
    whole_model, split_model = _model(tiny_base_dir), _model(tiny_base_dir)
    whole = train(whole_model, plain, spec, tmp_path / "whole", identity={})
    parts = train(split_model, split, spec, tmp_path / "split", identity={})
    assert [loss for _, loss in parts.train_losses] == pytest.approx([loss for _, loss in whole.train_losses], rel=1e-5)
    for (name, a), (_, b) in zip(whole_model.named_parameters(), split_model.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_base_matches_fp32_loss(tiny_base_dir: Path, tmp_path: Path) -> None:
    plan = tiny_plan(tiny_base_dir, micro=4)
    spec = {**FAST, "max_steps": 4, "eval_every": 0.5}
    fp32 = train(_model(tiny_base_dir), plan, TrainSpec(**spec), tmp_path / "fp32", identity={})
    bf16_model = _model(tiny_base_dir, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters() if p.requires_grad)
    bf16 = train(bf16_model, plan, TrainSpec(**{**spec, "precision": "bf16"}), tmp_path / "bf16", identity={})
    for (_, a), (_, b) in zip(fp32.train_losses, bf16.train_losses, strict=True):
        assert b == pytest.approx(a, rel=2e-2)
