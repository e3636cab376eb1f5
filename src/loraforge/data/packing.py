"""Pack tokenized examples into full rows and collate them into batches.

Packed rows carry position_ids that restart at 0 for each example and no attention_mask. With
`attention_mask=None` and `use_cache=False`, transformers (masking_utils.find_packed_sequence_indices)
turns the restarts into a block-diagonal causal mask, so no token attends across examples; the
isolation test in tests/test_data_packing.py checks it on the sdpa path.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from loraforge.data.types import IGNORE_INDEX, PackedSequence, TokenizedExample
from loraforge.errors import DataError


class _FirstFitTree:
    """Max segment tree over bin capacities: finds the lowest-index bin with room in O(log bins)."""

    def __init__(self, n_leaves: int) -> None:
        self.size = 1
        while self.size < max(1, n_leaves):
            self.size *= 2
        self.tree = [0] * (2 * self.size)

    def set(self, index: int, room: int) -> None:
        node = index + self.size
        self.tree[node] = room
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2

    def first_fit(self, need: int) -> int | None:
        if self.tree[1] < need:
            return None
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= need else 2 * node + 1
        return node - self.size


def pack_examples(examples: list[TokenizedExample], max_seq_len: int, *, seed: int = 0) -> list[PackedSequence]:
    """First-fit-decreasing into rows of at most max_seq_len tokens; the row order is shuffled by seed.

    Deterministic: ties in length keep input order, and the same seed gives the same rows.
    """
    too_long = [ex.line for ex in examples if len(ex.input_ids) > max_seq_len]
    if too_long:
        raise DataError(
            f"{len(too_long)} example(s) longer than max_seq_len={max_seq_len} (first at line {too_long[0]}); "
            "truncate them first (prepare_data does)"
        )
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    tree = _FirstFitTree(len(examples))
    bins: list[list[int]] = []
    rooms: list[int] = []
    for index in order:
        need = len(examples[index].input_ids)
        slot = tree.first_fit(need)
        if slot is None:
            slot = len(bins)
            bins.append([])
            rooms.append(max_seq_len)
        bins[slot].append(index)
        rooms[slot] -= need
        tree.set(slot, rooms[slot])
    random.Random(seed).shuffle(bins)
    return [_join([examples[i] for i in members]) for members in bins]


def _join(members: list[TokenizedExample]) -> PackedSequence:
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in members:
        input_ids.extend(example.input_ids)
        # the first label would be predicted from the previous example's last token after the
        # causal shift; alone it predicts nothing either, so packed and unpacked losses match
        labels.extend((IGNORE_INDEX, *example.labels[1:]))
        positions.extend(range(len(example.input_ids)))
    return PackedSequence(
        input_ids=tuple(input_ids),
        labels=tuple(labels),
        position_ids=tuple(positions),
        lengths=tuple(len(ex.input_ids) for ex in members),
        replay=tuple(ex.replay for ex in members) if any(ex.replay for ex in members) else (),
    )


def packing_efficiency(seqs: list[PackedSequence], max_seq_len: int) -> float:
    """Real tokens over slots (rows x max_seq_len): 1.0 means no padding at all."""
    if not seqs:
        return 0.0
    return sum(len(s.input_ids) for s in seqs) / (len(seqs) * max_seq_len)


def collate_packed(
    seqs: list[PackedSequence], *, pad_token_id: int = 0, anchor: bool = False
) -> dict[str, torch.Tensor]:
    """input_ids, labels, position_ids padded to the longest row; deliberately no attention_mask.

    Padding gets its own position run starting at 0, so it forms a separate block that no real token
    attends to; its labels are -100. Call the model with use_cache=False (a cache object disables
    the packed-sequence detection and rows would attend across examples). `anchor=True` adds the
    replay rows' loss tokens as a bool `anchor` map (see `anchor_map`).
    """
    if not seqs:
        raise DataError("collate_packed got no sequences; the batch is empty")
    ids, labels, positions = _right_padded([(s.input_ids, s.labels, s.position_ids) for s in seqs], pad_token_id)
    width = ids.shape[1]
    for row, seq in enumerate(seqs):
        n = len(seq.input_ids)
        positions[row, n:] = torch.arange(width - n)
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    return batch | (anchor_map([_replay_tokens(s) for s in seqs], labels) if anchor else {})


def collate_padded(
    examples: list[TokenizedExample], *, pad_token_id: int = 0, anchor: bool = False
) -> dict[str, torch.Tensor]:
    """One example per row, right-padded: input_ids, labels (-100 on padding), attention_mask; with
    `anchor=True` also the replay rows' loss tokens (see `anchor_map`)."""
    if not examples:
        raise DataError("collate_padded got no examples; the batch is empty")
    ids, labels, mask = _right_padded(
        [(ex.input_ids, ex.labels, [1] * len(ex.input_ids)) for ex in examples], pad_token_id
    )
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return batch | (anchor_map([[ex.replay] * len(ex.input_ids) for ex in examples], labels) if anchor else {})


def anchor_map(replay_tokens: list[list[bool]], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"anchor": bool map shaped like labels, True on the loss tokens of replay examples}, or {} when
    the batch has none: a batch without replay tokens is exactly the batch it was without the option."""
    flags = torch.zeros(labels.shape, dtype=torch.bool)
    for row, tokens in enumerate(replay_tokens):
        flags[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.bool)
    flags &= labels != IGNORE_INDEX
    return {"anchor": flags} if bool(flags.any()) else {}


def _replay_tokens(seq: PackedSequence) -> list[bool]:
    if not seq.replay:
        return [False] * len(seq.input_ids)
    return [flag for flag, length in zip(seq.replay, seq.lengths, strict=True) for _ in range(length)]


def _right_padded(
    rows: list[tuple[Sequence[int], Sequence[int], Sequence[int]]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (input_ids, labels, extra) rows right-padded to the longest: pad id, -100 and 0 on padding."""
    width = max(len(ids) for ids, _, _ in rows)
    ids_t = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    extra_t = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, labels, extra) in enumerate(rows):
        n = len(ids)
        ids_t[row, :n] = torch.tensor(ids, dtype=torch.long)
        labels_t[row, :n] = torch.tensor(labels, dtype=torch.long)
        extra_t[row, :n] = torch.tensor(extra, dtype=torch.long)
    return ids_t, labels_t, extra_t


def count_loss_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the causal shift (label at position 0 predicts nothing)."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum().item())


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy over the loss tokens of one micro-batch.

    The step loss is the sum over its micro-batches divided by `count_loss_tokens` of the whole
    optimizer step: every loss token weighs the same, however rows were packed or split, instead
    of the mean of per-row means that over-weights short answers.
    """
    shift_logits = logits[..., :-1, :].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
