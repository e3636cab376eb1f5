"""The fused head + cross-entropy (train/head_loss.py) against the plain path it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraforge.train.head_loss import summed_head_loss


def _plain(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="sum")


@pytest.mark.parametrize("rows", [1, 7, 300])  # below, around and above CHUNK_ROWS chunks
def test_fused_head_loss_matches_the_plain_loss_and_gradient_in_fp32(rows: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(1000, 32) / 4
    targets = torch.randint(0, 1000, (rows,))
    hidden = torch.randn(rows, 32, requires_grad=True)
    plain_hidden = hidden.detach().clone().requires_grad_(True)
    fused = summed_head_loss(hidden, weight, targets)
    plain = _plain(plain_hidden, weight, targets)
    (fused * 0.37).backward()
    (plain * 0.37).backward()
    assert torch.allclose(fused, plain, rtol=1e-6, atol=1e-5)
    assert hidden.grad is not None and plain_hidden.grad is not None
    rel = (hidden.grad - plain_hidden.grad).norm() / plain_hidden.grad.norm()
    assert rel < 1e-6


def test_fused_head_loss_in_bf16_rounds_as_the_plain_path_does() -> None:
    torch.manual_seed(1)
    weight = (torch.randn(2000, 64) / 8).bfloat16()
    targets = torch.randint(0, 2000, (200,))
    hidden = torch.randn(200, 64).bfloat16().requires_grad_(True)
    plain_hidden = hidden.detach().clone().requires_grad_(True)
    fused = summed_head_loss(hidden, weight, targets)
    plain = _plain(plain_hidden, weight, targets)
    fused.backward()
    plain.backward()
    fused, plain = fused.detach(), plain.detach()
    assert hidden.grad is not None and plain_hidden.grad is not None
    assert hidden.grad.dtype == torch.bfloat16
    assert abs(fused.item() - plain.item()) <= 1e-4 * abs(plain.item())  # same bf16 logits, fp32 sums
    rel = (hidden.grad.float() - plain_hidden.grad.float()).norm() / plain_hidden.grad.float().norm()
    assert rel < 1e-2  # one bf16 rounding of the product, placed before or after the scale


def test_fused_head_loss_refuses_a_trainable_head() -> None:
    weight = torch.randn(10, 4, requires_grad=True)
    with pytest.raises(ValueError, match="frozen output head"):
        summed_head_loss(torch.randn(3, 4), weight, torch.tensor([1, 2, 3]))


def test_fused_head_loss_without_grad_gives_the_same_loss() -> None:
    torch.manual_seed(2)
    weight = torch.randn(500, 16)
    targets = torch.randint(0, 500, (150,))
    hidden = torch.randn(150, 16)
    with torch.no_grad():
        assert torch.allclose(summed_head_loss(hidden, weight, targets), _plain(hidden, weight, targets), rtol=1e-6)
