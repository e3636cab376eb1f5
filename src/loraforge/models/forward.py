"""A causal LM forward that applies the output head only where a label is: on a 49k-vocab base the
full logits tensor is the largest activation of a step, and prompt tokens never need it."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel


def causal_lm_of(model: PeftModel | PreTrainedModel) -> PreTrainedModel:
    """The transformers model under a PeftModel (its LoRA layers live inside it), or the model itself."""
    return cast(PreTrainedModel, model.get_base_model() if isinstance(model, PeftModel) else model)


def logits_at_labels(
    model: PeftModel | PreTrainedModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 logits at the positions whose next-token label is not `ignore_index`, those targets, and the
    (batch, seq-1) bool map of where they sit.

    attention_mask=None with position_ids: transformers builds a block-diagonal mask for packed
    rows. use_cache=False: with a cache object, sdpa ignores the packed layout.
    """
    return head_at_labels(model, decoder_hidden(model, input_ids, position_ids, attention_mask), labels,
                          ignore_index=ignore_index)  # fmt: skip


def decoder_hidden(
    model: PeftModel | PreTrainedModel,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The decoder's last hidden states (batch, seq, hidden), before the output head."""
    decoder = causal_lm_of(model).get_decoder()
    out = decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False)
    return cast(torch.Tensor, out.last_hidden_state)


def head_at_labels(
    model: PeftModel | PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor, *, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output head on the decoder's hidden states at labelled positions only (see logits_at_labels)."""
    head = cast(nn.Module, causal_lm_of(model).get_output_embeddings())
    at_labels, targets, keep = hidden_at_labels(hidden, labels, ignore_index=ignore_index)
    return head(at_labels).float(), targets, keep


def hidden_at_labels(
    hidden: torch.Tensor, labels: torch.Tensor, *, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hidden states whose next-token label is not `ignore_index`, those targets, and where they sit."""
    targets = labels[:, 1:]
    keep = targets != ignore_index
    return hidden[:, :-1][keep], targets[keep], keep


def summed_nll_per_row(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> list[tuple[float, int]]:
    """(summed token NLL, token count) per row, from head_at_labels' outputs."""
    nll = torch.zeros(keep.shape, dtype=torch.float32, device=logits.device)
    nll[keep] = F.cross_entropy(logits, targets, reduction="none")
    return list(zip(nll.sum(dim=1).tolist(), keep.sum(dim=1).tolist(), strict=True))
