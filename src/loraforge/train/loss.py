"""Summed token loss computed only at positions that carry a label.

The output head is applied to the hidden states of loss positions alone: on a 49k-vocab base the
full logits tensor is the largest activation of the step, and prompt tokens never need it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from loraforge.data.types import IGNORE_INDEX
from loraforge.models.forward import logits_at_labels


class TokenLossSum(nn.Module):
    """Wraps a PEFT causal LM; forward returns the SUM of token cross-entropies (not a mean),
    so the loop can normalise by every loss token of the optimizer step, across micro-batches and
    processes. Wrapping (rather than calling parts of the model) keeps DDP's forward hooks in play."""

    def __init__(self, model: PeftModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits, targets, _ = logits_at_labels(
            self.model, input_ids, labels, position_ids, attention_mask, ignore_index=IGNORE_INDEX
        )
        return F.cross_entropy(logits, targets, reduction="sum")
