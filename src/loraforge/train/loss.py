"""Summed token loss computed only at positions that carry a label.

The output head is applied to the hidden states of loss positions alone: on a 49k-vocab base the
full logits tensor is the largest activation of the step, and prompt tokens never need it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from loraforge.data.types import IGNORE_INDEX


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
        causal_lm = cast(PreTrainedModel, self.model.get_base_model())
        # attention_mask=None with position_ids: transformers builds a block-diagonal mask for packed
        # rows. use_cache=False: with a cache object, sdpa ignores the packed layout.
        hidden = causal_lm.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        selected = hidden[:, :-1][keep]
        head = cast(nn.Module, causal_lm.get_output_embeddings())
        logits = head(selected).float()
        return F.cross_entropy(logits, targets[keep], reduction="sum")
