"""Speed work must not change the math: loraforge's training path against a plain PEFT loop
(fp32, padded batches, the model's own loss) on the tiny model, with the same rows in the same order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from train_rows import tiny_examples
from transformers import get_cosine_schedule_with_warmup

from loraforge.config import LoraSpec, TrainSpec
from loraforge.data import collate_packed, collate_padded, count_loss_tokens, pack_examples
from loraforge.data.types import TokenizedExample
from loraforge.models import attach_lora, load_base
from loraforge.train import BatchPlan, TrainResult, train
from loraforge.train.fused_lora import fuse_lora_layers
from loraforge.train.loss import TokenLossSum

LR = 5e-3
STEPS = 50


def _model(base_dir: Path, seed: int = 0) -> PeftModel:
    """fp32 tiny base with an adapter whose B is non-zero, so A receives a gradient in step one too."""
    torch.manual_seed(seed)
    model = attach_lora(load_base(str(base_dir), dtype=torch.float32).model, LoraSpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    return model


def _collate_packed_within(rows: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
    """The micro-batch's own rows packed together: same rows per step as the padded loop."""
    return collate_packed(pack_examples(list(rows), max_seq_len=128, seed=0))


def _plans(base_dir: Path) -> tuple[BatchPlan, BatchPlan]:
    rows = tiny_examples(base_dir, 32)
    packed = BatchPlan(rows[:24], rows[24:], _collate_packed_within, micro_batch_size=4, seed=0)
    padded = BatchPlan(rows[:24], rows[24:], partial(collate_padded, pad_token_id=0), micro_batch_size=4, seed=0)
    return packed, padded


def _grads(model: PeftModel) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])


def _plain_peft_loss(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def test_one_step_gradient_matches_a_plain_peft_step(tiny_base_dir: Path) -> None:
    packed_plan, padded_plan = _plans(tiny_base_dir)
    ours, plain = _model(tiny_base_dir), _model(tiny_base_dir)
    assert fuse_lora_layers(ours) == 14  # 7 adapted layers x 2 blocks: the step below runs the fused path
    ours.train()  # the fused path serves training forwards only
    plain.train()
    batch = packed_plan.train_batch(0)
    (TokenLossSum(ours)(**batch) / count_loss_tokens(batch["labels"])).backward()
    _plain_peft_loss(plain, padded_plan.train_batch(0)).backward()
    expected = _grads(plain)
    assert float(expected.norm()) > 0
    assert float((_grads(ours) - expected).norm() / expected.norm()) < 1e-5


def test_fused_layers_leave_eval_forwards_to_peft(tiny_base_dir: Path) -> None:
    packed_plan, _ = _plans(tiny_base_dir)
    fused, plain = _model(tiny_base_dir), _model(tiny_base_dir)
    fuse_lora_layers(fused)
    batch = packed_plan.train_batch(0)
    with torch.no_grad():
        assert torch.equal(TokenLossSum(fused.eval())(**batch), TokenLossSum(plain.eval())(**batch))


def _plain_peft_run(base_dir: Path, plan: BatchPlan) -> tuple[list[float], PeftModel]:
    model = _model(base_dir)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.1 * STEPS), STEPS)
    losses = []
    for step in range(STEPS):
        loss = _plain_peft_loss(model, plan.train_batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, model


@torch.no_grad()
def _plain_eval_loss(model: PeftModel, plan: BatchPlan) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in plan.eval_batches():
        n = count_loss_tokens(batch["labels"])
        total += float(_plain_peft_loss(model, batch)) * n
        count += n
    return total / count


@dataclass
class FiftySteps:
    ours: TrainResult
    plain_losses: list[float]
    plain_eval_loss: float


@pytest.fixture(scope="module")
def fifty_steps(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FiftySteps:
    packed_plan, padded_plan = _plans(tiny_base_dir)
    spec = TrainSpec(epochs=100, max_steps=STEPS, lr=LR, warmup_ratio=0.1, weight_decay=0.0, micro_batch_size=4,
                     grad_accum=1, max_grad_norm=1.0, eval_every=100, precision="fp32")  # fmt: skip
    result = train(_model(tiny_base_dir), packed_plan, spec, tmp_path_factory.mktemp("run"), identity={})
    plain_losses, plain_model = _plain_peft_run(tiny_base_dir, padded_plan)
    return FiftySteps(result, plain_losses, _plain_eval_loss(plain_model, padded_plan))


def test_fifty_step_losses_track_a_plain_peft_loop(fifty_steps: FiftySteps) -> None:
    ours = [loss for _, loss in fifty_steps.ours.train_losses]
    plain = fifty_steps.plain_losses
    assert len(ours) == len(plain) == STEPS
    assert plain[-1] < plain[0]
    far = [(i, a, b) for i, (a, b) in enumerate(zip(ours, plain, strict=True)) if abs(a - b) > 1e-3 + 1e-2 * abs(b)]
    assert not far, f"steps whose loss left the band (step, ours, plain): {far[:5]}"


def test_final_eval_loss_matches_a_plain_peft_loop_within_half_a_percent(fifty_steps: FiftySteps) -> None:
    final_step, ours = fifty_steps.ours.eval_losses[-1]
    assert final_step == STEPS
    assert ours == pytest.approx(fifty_steps.plain_eval_loss, rel=5e-3)


@pytest.mark.parametrize("shared_input", [False, True])
def test_fused_dropout_gradients_match_autograd_with_the_same_mask(shared_input: bool) -> None:
    """Dropout keeps a bool mask and the layer input, and rebuilds the dropped input in backward:
    the gradients must be autograd's for x * mask / (1 - p) with the mask forward drew."""
    from loraforge.train.fused_lora import _LoraLinearFn, keep_mask

    p, scaling = 0.25, 2.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    bias = torch.randn(24, generator=gen, dtype=torch.float64)
    lora_a = torch.randn(4, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    lora_b = torch.randn(24, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, 24, generator=gen, dtype=torch.float64)

    torch.manual_seed(7)
    out = _LoraLinearFn.apply(x, weight, bias, lora_a, lora_b, scaling, p)
    if shared_input:  # a second layer reading the same tensor, as k_proj reads q_proj's input
        out = out + _LoraLinearFn.apply(x, weight, bias, lora_a, lora_b, scaling, p)
    (out * upstream).sum().backward()
    fused = [t.grad.clone() for t in (x, lora_a, lora_b)]

    torch.manual_seed(7)
    refs = [x.detach().clone().requires_grad_(), lora_a.detach().clone().requires_grad_(),
            lora_b.detach().clone().requires_grad_()]  # fmt: skip
    rx, ra, rb = refs

    def reference_layer() -> torch.Tensor:
        keep, keep_probability = keep_mask((15, 16), p, x.device)  # the draw the Function makes, in its order
        dropped = rx * keep.reshape(3, 5, 16).to(rx.dtype) / keep_probability
        return torch.nn.functional.linear(rx, weight, bias) + dropped @ ra.t() @ rb.t() * scaling

    expected = reference_layer() + (reference_layer() if shared_input else 0)
    assert torch.allclose(out, expected)
    (expected * upstream).sum().backward()
    for got, want in zip(fused, (rx.grad, ra.grad, rb.grad), strict=True):
        assert want is not None and float(want.norm()) > 0
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_dropout_masks_drop_at_rate_p_independently_and_stay_unbiased(p: float) -> None:
    """The CPU mask draws four 16-bit lanes per 64-bit random word: each element must still be an
    independent Bernoulli(1 - p) draw, and x * keep / keep_probability must average x."""
    from loraforge.train.fused_lora import LANE_LEVELS, keep_mask

    torch.manual_seed(0)
    keep, keep_probability = keep_mask((2000, 1000), p, torch.device("cpu"))
    assert keep.dtype == torch.bool and keep.shape == (2000, 1000)
    assert abs(keep_probability - (1 - p)) <= 0.5 / LANE_LEVELS
    n, dropped = keep.numel(), (~keep).float()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(float(dropped.mean()) - (1 - keep_probability)) < 5 * sigma
    flat = dropped.flatten()
    for lag in (1, 2, 3, 4, 1000):  # lanes of one word, neighbouring words, the next row
        both = float((flat[:-lag] * flat[lag:]).mean())
        assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5, f"lag {lag}: {both} vs {p * p}"
    rows = dropped.mean(dim=1)  # no row (a token's features) drops far more than another
    assert float(rows.std()) < 1.5 * (p * (1 - p) / 1000) ** 0.5
    x = torch.randn(2000, 1000)
    bias = float((x * keep / keep_probability).mean() - x.mean())
    assert abs(bias) < 5 * (p / ((1 - p) * n)) ** 0.5  # x has unit variance
    assert keep_mask((7,), 0.5, torch.device("cpu"))[0].shape == (7,)  # a count not divisible by four
