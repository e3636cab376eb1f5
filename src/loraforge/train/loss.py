"""Summed token loss computed only at positions that carry a label, plus the optional replay KL.

The output head is applied to the hidden states of loss positions alone: on a 49k-vocab base the
full logits tensor is the largest activation of the step, and prompt tokens never need it.

With `replay_kl` (train.replay_kl) and a batch that carries an `anchor` map (the loss tokens of
data.replay rows), each anchored token also adds replay_kl * KL(p_base || p_adapter) over the full
vocabulary, p_base being the same model with its adapter switched off. The base forward runs only on
the rows holding anchored tokens, without gradient, and its head only at the anchored positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from loraforge.data import count_loss_tokens
from loraforge.data.types import IGNORE_INDEX
from loraforge.models.forward import causal_lm_of, decoder_hidden, hidden_at_labels, logits_at_labels
from loraforge.train.head_loss import summed_head_loss


class TokenLossSum(nn.Module):
    """Wraps a PEFT causal LM; forward returns the SUM of token cross-entropies (not a mean), plus
    replay_kl times the summed replay KL, so the loop can normalise by every loss token of the
    optimizer step, across micro-batches and processes. Wrapping (rather than calling parts of the
    model) keeps DDP's forward hooks in play, the base forward for the KL included.

    `last_kl_sum` holds the (detached, unweighted) summed KL of the latest forward, 0 without anchors."""

    def __init__(self, model: PeftModel, replay_kl: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.replay_kl = replay_kl
        self.last_kl_sum = torch.zeros(())

    @staticmethod
    def units(batch: dict[str, torch.Tensor]) -> int:
        """Loss tokens in a batch: what the summed loss is a sum over."""
        return count_loss_tokens(batch["labels"])

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        weight = self.replay_kl
        if weight is not None and anchor is not None:
            anchor = anchor & (labels != IGNORE_INDEX)
        # the base runs first: switching the adapter off flips requires_grad on its weights, which
        # must not happen while the adapter forward's graph waits for backward
        base_logits = None
        if weight is not None and anchor is not None and bool(anchor[:, 1:].any()):
            base_logits = base_logits_at(self.model, input_ids, anchor, position_ids, attention_mask)
        if base_logits is None and (head := frozen_head(self.model)) is not None:
            # no KL term needs the logits: the head and the loss run fused, chunk by chunk (head_loss.py)
            hidden = decoder_hidden(self.model, input_ids, position_ids, attention_mask)
            at_labels, targets, _ = hidden_at_labels(hidden, labels, ignore_index=IGNORE_INDEX)
            self.last_kl_sum = torch.zeros((), device=hidden.device)
            return summed_head_loss(at_labels, head.weight, targets)
        logits, targets, keep = logits_at_labels(
            self.model, input_ids, labels, position_ids, attention_mask, ignore_index=IGNORE_INDEX
        )
        loss = F.cross_entropy(logits, targets, reduction="sum")
        if weight is None or anchor is None or base_logits is None:
            self.last_kl_sum = torch.zeros((), device=loss.device)
            return loss
        kl = summed_kl(base_logits, logits[anchor[:, 1:][keep]])  # keep's row-major order, narrowed to anchors
        self.last_kl_sum = kl.detach()
        return loss + weight * kl


def frozen_head(model: PeftModel) -> nn.Linear | None:
    """The output head when the fused head loss can take it: a frozen nn.Linear without bias."""
    head = causal_lm_of(model).get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return head


@torch.no_grad()
def base_logits_at(
    model: PeftModel,
    input_ids: torch.Tensor,
    anchor: torch.Tensor,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """fp32 logits of the adapter-free base at the anchored tokens (anchor[:, 1:], row-major); only the
    rows holding anchored tokens go through the model."""
    rows = anchor[:, 1:].any(dim=1).nonzero().squeeze(1)
    anchor_labels = torch.where(anchor, 0, IGNORE_INDEX).index_select(0, rows)
    positions = position_ids.index_select(0, rows) if position_ids is not None else None
    mask = attention_mask.index_select(0, rows) if attention_mask is not None else None
    with model.disable_adapter():
        logits, _, _ = logits_at_labels(
            model, input_ids.index_select(0, rows), anchor_labels, positions, mask, ignore_index=IGNORE_INDEX
        )
    return logits


def summed_kl(base_logits: torch.Tensor, adapter_logits: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of KL(p_base || p_adapter), full vocabulary, fp32 log-softmax."""
    base_log_probs = F.log_softmax(base_logits.float(), dim=-1)
    adapter_log_probs = F.log_softmax(adapter_logits.float(), dim=-1)
    return F.kl_div(adapter_log_probs, base_log_probs, log_target=True, reduction="sum")


def anchored_tokens(micro: list[dict[str, torch.Tensor]]) -> int:
    """Replay tokens the KL anchors in these batches, counted as TokenLossSum counts them: after
    the causal shift, and labelled."""
    return sum(int((b["anchor"][:, 1:] & (b["labels"][:, 1:] != IGNORE_INDEX)).sum()) for b in micro if "anchor" in b)


def mean_replay_kl(kl_sum: float, anchored: int) -> float | None:
    """The replay KL per anchored token of a step (the logged `replay_kl`); None without anchored tokens."""
    return kl_sum / anchored if anchored else None
