"""train.replay_kl: replay tokens add beta * KL(base || adapter), computed against the adapter-free base."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from train_rows import tiny_examples

from loraforge.config import Config, DataSpec, LoraSpec, TrainSpec
from loraforge.data import PreparedData, collate_packed, pack_examples
from loraforge.data.types import TokenizedExample
from loraforge.errors import TrainError
from loraforge.models import attach_lora, load_base
from loraforge.pipeline.train_run import build_batch_plan
from loraforge.train import BatchPlan, train
from loraforge.train.fused_lora import fuse_lora_layers
from loraforge.train.loss import TokenLossSum, base_logits_at

BETA = 0.5


def _model(base_dir: Path, *, nonzero_b: bool) -> PeftModel:
    torch.manual_seed(0)
    model = attach_lora(load_base(str(base_dir), dtype=torch.float32).model, LoraSpec(r=4, alpha=8, dropout=0.0))
    if nonzero_b:  # a fresh adapter equals the base; this one must not
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.05)
    fuse_lora_layers(model)
    return model.train()  # the fused training path, which must honour disable_adapter()


def _mixed_batch(base_dir: Path) -> dict[str, torch.Tensor]:
    """Three packed rows: task + replay, task only, replay only."""
    examples = tiny_examples(base_dir, 6)
    task, replay = examples[:3], [replace(ex, replay=True) for ex in examples[3:]]
    groups = [[task[0], replay[0]], [task[1], task[2]], [replay[1], replay[2]]]
    rows = [pack_examples(group, max_seq_len=256)[0] for group in groups]
    return collate_packed(rows, anchor=True)


def _grads(model: PeftModel) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])


def _loss_and_grads(model: PeftModel, batch: dict[str, torch.Tensor], beta: float | None) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    module = TokenLossSum(model, replay_kl=beta)
    loss = module(**batch)
    loss.backward()
    return float(module.last_kl_sum), _grads(model)


def test_replay_kl_matches_kl_div_against_a_plain_base_forward(tiny_base_dir: Path) -> None:
    model = _model(tiny_base_dir, nonzero_b=True)
    plain_base = load_base(str(tiny_base_dir), dtype=torch.float32).model.eval()
    batch = _mixed_batch(tiny_base_dir)
    anchored = batch["anchor"][:, 1:]
    assert anchored.any(dim=1).tolist() == [True, False, True]
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        base_logits = plain_base(**inputs).logits[:, :-1][anchored].float()
        adapter_logits = model.eval()(**inputs).logits[:, :-1][anchored].float()
    model.train()
    expected = F.kl_div(
        F.log_softmax(adapter_logits, -1), F.log_softmax(base_logits, -1), log_target=True, reduction="none"
    ).sum(-1)
    assert float(expected.min()) > 0
    ours = base_logits_at(model, batch["input_ids"], batch["anchor"], batch["position_ids"], None)
    torch.testing.assert_close(ours, base_logits, atol=1e-5, rtol=1e-5)  # token by token, adapter switched off
    module = TokenLossSum(model, replay_kl=BETA)
    with torch.no_grad():
        with_kl = float(module(**batch))
        assert float(module.last_kl_sum) == pytest.approx(float(expected.sum()), rel=1e-5, abs=1e-5)
        without = float(TokenLossSum(model)(**batch))
    assert with_kl == pytest.approx(without + BETA * float(expected.sum()), rel=1e-5)


def test_fresh_adapter_has_zero_kl_and_the_plain_gradient_until_it_moves(tiny_base_dir: Path) -> None:
    model = _model(tiny_base_dir, nonzero_b=False)
    batch = _mixed_batch(tiny_base_dir)
    kl, with_kl = _loss_and_grads(model, batch, BETA)
    _, plain = _loss_and_grads(model, batch, None)
    assert kl == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(with_kl, plain, atol=1e-7, rtol=1e-5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _loss_and_grads(model, batch, BETA)
    optimizer.step()
    kl, with_kl = _loss_and_grads(model, batch, BETA)
    _, plain = _loss_and_grads(model, batch, None)
    assert kl > 0
    assert float((with_kl - plain).norm() / plain.norm()) > 1e-3


def test_batch_without_anchor_gives_the_same_loss_bit_for_bit(tiny_base_dir: Path) -> None:
    model = _model(tiny_base_dir, nonzero_b=True)
    task = tiny_examples(tiny_base_dir, 4)
    rows = pack_examples(task, max_seq_len=256)
    batch = collate_packed(rows, anchor=True)
    assert "anchor" not in batch  # no replay example: the batch is the one collate gave before
    with torch.no_grad():
        assert torch.equal(TokenLossSum(model, replay_kl=BETA)(**batch), TokenLossSum(model)(**batch))


def _replay_plan(base_dir: Path) -> BatchPlan:
    rows = tiny_examples(base_dir, 30)
    train_rows = [replace(ex, replay=i % 3 == 0) for i, ex in enumerate(rows[:24])]
    collate = partial(collate_packed, anchor=True)
    return BatchPlan(_pack_within(train_rows), _pack_within(rows[24:]), collate, micro_batch_size=2, seed=0)


def _pack_within(examples: list[TokenizedExample]) -> list[Any]:
    """Two examples per packed row, so rows mix replay and task examples."""
    return [pack_examples(examples[i : i + 2], max_seq_len=256)[0] for i in range(0, len(examples), 2)]


def test_train_logs_the_mean_kl_per_anchored_token(tiny_base_dir: Path, tmp_path: Path) -> None:
    spec = TrainSpec(
        lr=5e-3, warmup_ratio=0.0, micro_batch_size=2, grad_accum=2, max_steps=3, precision="fp32", replay_kl=BETA
    )
    train(_model(tiny_base_dir, nonzero_b=False), _replay_plan(tiny_base_dir), spec, tmp_path, identity={})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kls = [r["replay_kl"] for r in records if r["event"] == "train"]
    assert len(kls) == 3
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the base
    assert kls[-1] > 0
    assert all("replay_kl" not in r for r in records if r["event"] == "eval")


def test_replay_kl_without_replay_rows_left_is_refused(tiny_base_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "replay.jsonl").write_text("")
    config = Config(
        data=DataSpec(train=tmp_path / "t.jsonl", replay=tmp_path / "replay.jsonl"), train=TrainSpec(replay_kl=BETA)
    )
    examples = tiny_examples(tiny_base_dir, 4)
    data = PreparedData(train=examples[:3], eval=examples[3:], golden=[], max_seq_len=256)
    base: Any = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0))
    accelerator: Any = SimpleNamespace(num_processes=1, process_index=0)
    with pytest.raises(TrainError, match=r"train.replay_kl is set but no row of data.replay"):
        build_batch_plan(config, data, base, accelerator)
    data.train[0] = replace(data.train[0], replay=True)
    plan, _ = build_batch_plan(config, data, base, accelerator)
    assert any("anchor" in plan.train_batch(i) for i in range(plan.micro_batches_per_epoch))
    assert not any("anchor" in batch for batch in plan.eval_batches())  # eval loss measures the task only
