"""Pack tokenized examples into full rows and collate them into batches.

Packed rows carry position_ids that restart at 0 for each example and no attention_mask. With
`attention_mask=None` and `use_cache=False`, transformers (masking_utils.find_packed_sequence_indices)
turns the restarts into a block-diagonal causal mask, so no token attends across examples; the
isolation test in tests/test_data_packing.py checks it on the sdpa path.

Shared prefixes (`share_prefix=True`, data.share_prefix): examples that begin with the same tokens,
typically the chat template's system turn, are packed behind one copy of them. Each example's
remaining tokens follow with their positions continuing from the prefix, and collate_packed adds a
4D mask under which each example attends to the prefix and to itself only: every token computes
exactly what it computes alone, and the prefix is computed once a row instead of once an example.
The prefix never holds a loss token, so the loss is the same token for token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from loraforge.config import DataSpec
from loraforge.data.types import IGNORE_INDEX, PackedSequence, TokenizedExample
from loraforge.errors import DataError

# Examples are grouped by their first PREFIX_KEY tokens; a group shares its longest common prefix
# when that is at least MIN_SHARED_PREFIX tokens (shorter ones do not pay for the custom mask).
PREFIX_KEY = 16
MIN_SHARED_PREFIX = 16


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


def pack_examples(
    examples: list[TokenizedExample],
    max_seq_len: int,
    *,
    seed: int = 0,
    share_prefix: bool = False,
    pack_len: int | None = None,
) -> list[PackedSequence]:
    """First-fit-decreasing into rows of at most `pack_len` (default max_seq_len) tokens; the row order
    is shuffled by seed. With `share_prefix`, groups of examples that begin with the same tokens
    (see `shared_prefixes`) are packed apart, behind one copy of their prefix each row.

    Deterministic: ties in length keep input order, and the same seed gives the same rows.
    """
    row_len = pack_len or max_seq_len
    too_long = [ex.line for ex in examples if len(ex.input_ids) > row_len]
    if too_long:
        raise DataError(
            f"{len(too_long)} example(s) longer than {'pack_len' if pack_len else 'max_seq_len'}={row_len} "
            f"(first at line {too_long[0]}); truncate them first (prepare_data does)"
        )
    rows: list[PackedSequence] = []
    grouped: set[int] = set()
    for prefix_len, members in shared_prefixes(examples) if share_prefix else []:
        grouped.update(members)
        group = [examples[i] for i in members]
        for bin_ in _first_fit_decreasing([len(ex.input_ids) - prefix_len for ex in group], row_len - prefix_len):
            packed = [group[i] for i in bin_]
            rows.append(_join_shared(packed, prefix_len) if len(packed) > 1 else _join(packed))
    rest = [ex for i, ex in enumerate(examples) if i not in grouped]
    rows += [
        _join([rest[i] for i in bin_]) for bin_ in _first_fit_decreasing([len(ex.input_ids) for ex in rest], row_len)
    ]
    random.Random(seed).shuffle(rows)
    return rows


def pack_rows(examples: list[TokenizedExample], spec: DataSpec, max_seq_len: int, seed: int) -> list[PackedSequence]:
    """pack_examples with the data section's options (data.pack_len, data.share_prefix)."""
    pack_len = resolve_pack_len(spec.pack_len, max_seq_len)
    return pack_examples(examples, max_seq_len, seed=seed, share_prefix=spec.share_prefix, pack_len=pack_len)


def packing_summary(rows: list[PackedSequence], row_len: int) -> dict[str, Any]:
    """The data report's packing figures: rows, efficiency (row tokens over row slots) and what the
    shared prefixes saved (tokens each example would have computed again)."""
    shared = [row for row in rows if row.prefix_len]
    return {
        "pack_len": row_len,
        "rows": len(rows),
        "efficiency": round(packing_efficiency(rows, row_len), 4),
        "shared_prefix_rows": len(shared),
        "shared_prefix_examples": sum(len(row.lengths) for row in shared),
        "shared_prefix_tokens_saved": sum((len(row.lengths) - 1) * row.prefix_len for row in shared),
    }


def resolve_pack_len(pack_len: int | str, max_seq_len: int) -> int:
    """data.pack_len as a number of tokens: auto is max_seq_len, and a row is never shorter than
    max_seq_len (it must hold the longest example)."""
    return max_seq_len if pack_len == "auto" else max(int(pack_len), max_seq_len)


def _first_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices into `sizes`, each summing to at most `capacity`, longest first, ties in input order."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    tree = _FirstFitTree(len(sizes))
    bins: list[list[int]] = []
    rooms: list[int] = []
    for index in order:
        need = sizes[index]
        slot = tree.first_fit(need)
        if slot is None:
            slot = len(bins)
            bins.append([])
            rooms.append(capacity)
        bins[slot].append(index)
        rooms[slot] -= need
        tree.set(slot, rooms[slot])
    return bins


def shared_prefixes(examples: list[TokenizedExample]) -> list[tuple[int, list[int]]]:
    """(prefix length, member indices) for each group of examples that share their first PREFIX_KEY
    tokens and, over the whole group, a prefix of at least MIN_SHARED_PREFIX tokens.

    The shared prefix is the group's longest common prefix, cut so that it and the token after it
    carry no label in any member (the token after the prefix is predicted from the prefix alone, not
    from the previous example in the row) and every member keeps at least one token of its own.
    """
    buckets: dict[tuple[int, ...], list[int]] = {}
    for index, example in enumerate(examples):
        if len(example.input_ids) > PREFIX_KEY:
            buckets.setdefault(example.input_ids[:PREFIX_KEY], []).append(index)
    groups = []
    for members in buckets.values():
        if len(members) < 2:
            continue
        first = examples[members[0]].input_ids
        shared = len(first)
        for index in members:
            ids, labels = examples[index].input_ids, examples[index].labels
            first_label = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            shared = min(shared, len(ids) - 1, first_label - 1)
            shared = next((i for i in range(shared) if ids[i] != first[i]), shared)
        if shared >= MIN_SHARED_PREFIX:
            groups.append((shared, members))
    return groups


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


def _join_shared(members: list[TokenizedExample], prefix_len: int) -> PackedSequence:
    """One copy of the members' common first `prefix_len` tokens, then each member's other tokens."""
    input_ids = list(members[0].input_ids[:prefix_len])
    labels = [IGNORE_INDEX] * prefix_len
    positions = list(range(prefix_len))
    for example in members:
        input_ids.extend(example.input_ids[prefix_len:])
        # shared_prefixes keeps this label unset in every member: alone it is predicted from the
        # prefix's last token, here it would be predicted from the previous member's last token
        labels.extend((IGNORE_INDEX, *example.labels[prefix_len + 1 :]))
        positions.extend(range(prefix_len, len(example.input_ids)))
    return PackedSequence(
        input_ids=tuple(input_ids),
        labels=tuple(labels),
        position_ids=tuple(positions),
        lengths=tuple(len(ex.input_ids) - prefix_len for ex in members),
        replay=tuple(ex.replay for ex in members) if any(ex.replay for ex in members) else (),
        prefix_len=prefix_len,
    )


def packing_efficiency(seqs: list[PackedSequence], max_seq_len: int) -> float:
    """Real tokens over slots (rows x max_seq_len): 1.0 means no padding at all."""
    if not seqs:
        return 0.0
    return sum(len(s.input_ids) for s in seqs) / (len(seqs) * max_seq_len)


def collate_packed(
    seqs: list[PackedSequence], *, pad_token_id: int = 0, anchor: bool = False
) -> dict[str, torch.Tensor]:
    """input_ids, labels, position_ids padded to the longest row; no attention_mask unless a row has a
    shared prefix.

    Padding gets its own position run starting at 0, so it forms a separate block that no real token
    attends to; its labels are -100. Call the model with use_cache=False (a cache object disables
    the packed-sequence detection and rows would attend across examples). When a row has a shared
    prefix, `attention_mask` is the 4D bool mask of `shared_prefix_mask` for every row (a 4D mask is
    used as given). `anchor=True` adds the replay rows' loss tokens as a bool `anchor` map (see
    `anchor_map`).
    """
    if not seqs:
        raise DataError("collate_packed got no sequences; the batch is empty")
    ids, labels, positions = _right_padded([(s.input_ids, s.labels, s.position_ids) for s in seqs], pad_token_id)
    width = ids.shape[1]
    for row, seq in enumerate(seqs):
        n = len(seq.input_ids)
        positions[row, n:] = torch.arange(width - n)
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if any(s.prefix_len for s in seqs):
        batch["attention_mask"] = shared_prefix_mask(seqs, width)
    return batch | (anchor_map([_replay_tokens(s) for s in seqs], labels) if anchor else {})


def shared_prefix_mask(seqs: list[PackedSequence], width: int) -> torch.Tensor:
    """(rows, 1, width, width) bool, True where a query token (dim 2) may attend to a key (dim 3):
    causal, within its own example, plus the row's shared prefix for an example's tokens. Padding
    attends causally to padding only, so no query row is empty."""
    segment = torch.full((len(seqs), width), -1, dtype=torch.long)  # -1 padding, 0 prefix, k the k-th example
    for row, seq in enumerate(seqs):
        segment[row, : seq.prefix_len] = 0
        start = seq.prefix_len
        for k, length in enumerate(seq.lengths, start=1):
            segment[row, start : start + length] = k
            start += length
    query, key = segment[:, :, None], segment[:, None, :]
    visible = (query == key) | ((key == 0) & (query > 0))
    return (visible & torch.ones(width, width, dtype=torch.bool).tril())[:, None]


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
    members = [flag for flag, length in zip(seq.replay, seq.lengths, strict=True) for _ in range(length)]
    return [False] * seq.prefix_len + members


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
