"""The preference round's objective (train.method: dpo): DPO's sigmoid loss and SimPO's
reference-free one, on pairs of answers to one prompt.

A micro-batch of n pairs is 2n rows, the n chosen sequences then the n rejected ones (prompt +
answer, right-padded), labels only on answer tokens. Each row's score is its answer's summed
log-probability under the policy (the model as it trains). DPO compares it with the same score
under the reference policy, which is where the run starts: the model at step 0, so the base for a
fresh adapter (LoRA's B starts at zero) and the SFT adapter for `train.init_adapter`. Those
reference scores do not change during a run, so they are computed once per pair before the first
step (`reference_scores`) and carried in every batch: one no-grad forward per pair per run, where
recomputing them costs one per pair per epoch, and no second copy of the weights is held.

sigmoid (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), per pair.
simpo (Meng et al. 2024): -log sigmoid(beta * (pi_c / len_c - pi_r / len_r) - gamma), per pair,
the answers' mean token log-probabilities, no reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from loraforge.data.types import IGNORE_INDEX, TokenizedPair
from loraforge.models.forward import logits_at_labels

PreferenceLossKind = Literal["sigmoid", "simpo"]
STAT_NAMES = ("margin", "correct", "chosen_drift", "rejected_drift")  # summed per pair in `last_stats`


@dataclass(frozen=True)
class ScoredPair:
    """A tokenized pair with the reference policy's summed answer log-probabilities."""

    pair: TokenizedPair
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def collate_pairs(rows: Sequence[ScoredPair | TokenizedPair], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """n pairs -> 2n right-padded rows (chosen first, then rejected) with answer-only labels, an
    attention mask, and the reference scores of each pair (0 for bare TokenizedPairs)."""
    scored = [r if isinstance(r, ScoredPair) else ScoredPair(r) for r in rows]
    sequences: list[tuple[tuple[int, ...], tuple[int, ...]]] = [(s.pair.prompt_ids, s.pair.chosen_ids) for s in scored]
    sequences += [(s.pair.prompt_ids, s.pair.rejected_ids) for s in scored]
    width = max(len(p) + len(a) for p, a in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (prompt, answer) in enumerate(sequences):
        ids = torch.tensor(prompt + answer, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        labels[row, len(prompt) : len(ids)] = ids[len(prompt) :]
        attention_mask[row, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "ref_chosen": torch.tensor([s.ref_chosen for s in scored], dtype=torch.float32),
        "ref_rejected": torch.tensor([s.ref_rejected for s in scored], dtype=torch.float32),
    }


def answer_logps(
    model: PeftModel | PreTrainedModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens (fp32) and how many there are."""
    logits, targets, keep = logits_at_labels(model, input_ids, labels, None, attention_mask, ignore_index=IGNORE_INDEX)
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 1, targets.unsqueeze(1)).squeeze(1)
    per_row = torch.zeros(keep.shape, dtype=torch.float32, device=token_logps.device)
    per_row = per_row.masked_scatter(keep, token_logps)
    return per_row.sum(dim=1), keep.sum(dim=1)


def pair_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    kind: PreferenceLossKind,
    beta: float,
    gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss and the implicit reward margin the loss pushes up (its sign: whether the policy
    prefers the chosen answer). sigmoid's margin is beta times the log-ratio difference; simpo's is
    beta times the mean-log-prob difference."""
    if kind == "sigmoid":
        margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        return -F.logsigmoid(margin), margin
    margin = beta * (chosen / chosen_len.clamp(min=1) - rejected / rejected_len.clamp(min=1))
    return -F.logsigmoid(margin - gamma), margin


class PreferenceLoss(nn.Module):
    """Wraps a PEFT causal LM; forward takes a collate_pairs batch and returns the SUM of its pairs'
    losses, so the loop normalises by every pair of the optimizer step (`units`), across
    micro-batches and processes, as it normalises SFT by tokens.

    `last_stats` holds the latest forward's detached sums over pairs: margin, correct (margin > 0),
    chosen_drift and rejected_drift (policy minus reference summed log-prob; both fall when DPO
    pushes probability mass off the data)."""

    def __init__(self, model: PeftModel, kind: PreferenceLossKind, beta: float, gamma: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.kind: PreferenceLossKind = kind
        self.beta = beta
        self.gamma = gamma
        self.last_stats = torch.zeros(len(STAT_NAMES))
        self.last_kl_sum = torch.zeros(())  # the loop's replay-KL slot: never used by preference runs

    @staticmethod
    def units(batch: dict[str, torch.Tensor]) -> int:
        """Pairs in a collate_pairs batch: what the summed loss is a sum over."""
        return int(batch["ref_chosen"].numel())

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
    ) -> torch.Tensor:
        logps, lengths = answer_logps(self.model, input_ids, labels, attention_mask)
        pairs = ref_chosen.numel()
        chosen, rejected = logps[:pairs], logps[pairs:]
        losses, margin = pair_losses(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            lengths[:pairs],
            lengths[pairs:],
            self.kind,
            self.beta,
            self.gamma,
        )
        with torch.no_grad():
            self.last_stats = torch.stack(
                [
                    margin.sum(),
                    (margin > 0).sum().float(),
                    (chosen - ref_chosen).sum(),
                    (rejected - ref_rejected).sum(),
                ]
            ).detach()
        return losses.sum()


@torch.no_grad()
def reference_scores(
    model: PeftModel | PreTrainedModel, pairs: Sequence[TokenizedPair], batch_size: int, progress: bool = False
) -> list[ScoredPair]:
    """Each pair (in the given order) with the summed answer log-probabilities of `model` as it is
    now (eval mode: no dropout), the reference policy of a run that starts here. Pairs are scored in
    order of length, so a batch pads to a near length; the order is fixed, so a resume scores the same batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    by_length = sorted(range(len(pairs)), key=lambda i: (pairs[i].length, i))
    scores: dict[int, tuple[float, float]] = {}
    starts = range(0, len(pairs), batch_size)
    for start in tqdm(starts, desc="reference", unit="batch", disable=not progress):
        chunk = by_length[start : start + batch_size]
        batch = collate_pairs([pairs[i] for i in chunk])
        logps, _ = answer_logps(
            model, batch["input_ids"].to(device), batch["labels"].to(device), batch["attention_mask"].to(device)
        )
        n = len(chunk)
        scores.update((i, (float(c), float(r))) for i, c, r in zip(chunk, logps[:n], logps[n:], strict=True))
    model.train(was_training)
    return [ScoredPair(pair, *scores[i]) for i, pair in enumerate(pairs)]


def mean_stats(sums: Any, pairs: int) -> dict[str, float]:
    """last_stats-style sums over `pairs` pairs -> the logged per-pair means (accuracy for `correct`)."""
    values = [float(v) / max(pairs, 1) for v in sums]
    named = dict(zip(STAT_NAMES, values, strict=True))
    named["accuracy"] = named.pop("correct")
    return {k: round(v, 6) for k, v in named.items()}
