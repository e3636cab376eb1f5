"""The output head and the summed cross-entropy as one autograd Function, a chunk of rows at a time.

The plain path (`head_at_labels` + `F.cross_entropy`) makes the loss positions' logits in the base
dtype, copies them to fp32, takes a log-softmax, and in backward fills, rescales and casts a second
and third tensor of the same size (loss positions x 49,152 on SmolLM2): on an AMX CPU those passes
took ~20% of a training step, more than the head's two GEMMs (docs/PERFORMANCE.md, the profile).
Here each chunk of rows makes its logits, their fp32 log-sum-exp and the gradient of its summed loss
with respect to the hidden states right away (softmax minus one-hot, times the head), and keeps only
that gradient (rows x hidden) for backward: no logits tensor outlives its chunk. The head must be
frozen (a LoRA adapter does not touch the tied output head); the arithmetic is the plain path's:
logits rounded to the base dtype before the fp32 softmax, the logit gradient cast back to it.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ROWS = 128  # 128 x 49,152 fp32 logits: 25 MB a chunk


class _HeadLossSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                need_grad: bool) -> torch.Tensor:  # fmt: skip
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            logits = (hidden[rows] @ weight.t()).float()  # rounded to the head's dtype first, as head() does
            target = targets[rows]
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if grad is None:  # eval: no backward will come, so no gradient GEMM
                continue
            probs = logits.sub_(log_norm[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(probs.shape[0], device=probs.device), target] -= 1.0
            grad[rows] = probs.to(hidden.dtype) @ weight
        if grad is not None:
            ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None


def summed_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight.T, targets), fp32; `weight` frozen (no gradient)."""
    if weight.requires_grad:
        raise ValueError("summed_head_loss needs a frozen output head")
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _HeadLossSum.apply(hidden, weight, targets, need_grad)  # type: ignore[no-any-return]
