"""Packing: rows never attend across examples, the packer is deterministic, the loss weighs tokens."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from loraforge.data import (
    IGNORE_INDEX,
    collate_packed,
    collate_padded,
    count_loss_tokens,
    pack_examples,
    summed_token_loss,
)
from loraforge.data.packing import MIN_SHARED_PREFIX, resolve_pack_len, shared_prefixes
from loraforge.data.types import TokenizedExample
from loraforge.errors import DataError


def _example(length: int, line: int, vocab: int = 500, seed: int = 0) -> TokenizedExample:
    rng = random.Random(seed * 1000 + line)
    ids = tuple(rng.randrange(10, vocab) for _ in range(length))
    labels = tuple(IGNORE_INDEX if i < length // 2 else t for i, t in enumerate(ids))
    return TokenizedExample(input_ids=ids, labels=labels, line=line)


def test_packed_rows_do_not_attend_across_examples(tiny_base_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    examples = [_example(n, line) for line, n in enumerate([23, 17, 40, 9, 30, 11], start=1)]
    packed = pack_examples(examples, max_seq_len=64, seed=0)
    assert any(len(seq.lengths) > 1 for seq in packed)
    batch = collate_packed(packed)
    assert "attention_mask" not in batch
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for row, seq in enumerate(packed):
            start = 0
            for length in seq.lengths:
                ids = torch.tensor([seq.input_ids[start : start + length]])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                torch.testing.assert_close(logits[row, start : start + length], alone, atol=1e-5, rtol=0)
                start += length


def test_first_fit_decreasing_fills_bins_and_is_deterministic() -> None:
    examples = [_example(n, i) for i, n in enumerate([50, 40, 30, 20, 14, 10, 6], start=1)]
    first = pack_examples(examples, max_seq_len=64, seed=3)
    again = pack_examples(examples, max_seq_len=64, seed=3)
    assert first == again
    assert sorted(sorted(s.lengths) for s in first) == [[6, 10, 30], [14, 50], [20, 40]]  # FFD by hand
    assert all(len(s.input_ids) <= 64 for s in first)


def test_position_ids_restart_and_first_label_of_each_example_is_ignored() -> None:
    [seq] = pack_examples([_example(4, 1), _example(3, 2)], max_seq_len=16)
    assert seq.position_ids == (0, 1, 2, 3, 0, 1, 2)
    assert seq.labels[0] == IGNORE_INDEX and seq.labels[4] == IGNORE_INDEX


def test_pack_refuses_an_example_longer_than_max_seq_len() -> None:
    with pytest.raises(DataError, match="longer than max_seq_len=8"):
        pack_examples([_example(9, 1)], max_seq_len=8)


def test_collate_packed_pads_with_ignored_labels_and_a_separate_position_run() -> None:
    seqs = pack_examples([_example(6, 1), _example(3, 2)], max_seq_len=6)
    batch = collate_packed(seqs, pad_token_id=2)
    short = [row for row in range(2) if batch["labels"][row, 3:].eq(IGNORE_INDEX).all()][0]
    assert batch["input_ids"][short, 3:].tolist() == [2, 2, 2]
    assert batch["position_ids"][short].tolist() == [0, 1, 2, 0, 1, 2]


def test_anchor_marks_only_the_replay_examples_loss_tokens_after_packing() -> None:
    task, replay = _example(6, 1), replace(_example(8, 2), replay=True)
    [seq] = pack_examples([task, replay], max_seq_len=16)
    assert (seq.lengths, seq.replay) == ((8, 6), (True, False))  # first fit decreasing: the longer one first
    [short] = pack_examples([_example(4, 3)], max_seq_len=16)
    batch = collate_packed([seq, short], anchor=True)
    expected = torch.zeros_like(batch["labels"], dtype=torch.bool)
    expected[0, :8] = batch["labels"][0, :8] != IGNORE_INDEX
    assert expected.any() and (batch["labels"][0, 8:14] != IGNORE_INDEX).any()
    assert torch.equal(batch["anchor"], expected)  # the task example's loss tokens, padding, row 2: never
    assert not batch["anchor"][0, 0]  # the first label of a packed example carries no loss


def test_anchor_is_left_out_when_off_or_when_no_replay_token_is_in_the_batch() -> None:
    rows = pack_examples([_example(6, 1), _example(5, 2)], max_seq_len=8)
    assert "anchor" not in collate_packed(rows, anchor=True)
    replayed = pack_examples([replace(_example(6, 1), replay=True)], max_seq_len=8)
    assert "anchor" not in collate_packed(replayed, anchor=False)
    padded = collate_padded([_example(5, 1), replace(_example(4, 2), replay=True)], anchor=True)
    assert padded["anchor"].tolist() == [[False] * 5, [False, False, True, True, False]]


def test_collate_padded_masks_padding() -> None:
    batch = collate_padded([_example(5, 1), _example(2, 2)])
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"][1, 2:].eq(IGNORE_INDEX).all()


def test_step_loss_is_the_mean_over_tokens_not_the_mean_of_row_means() -> None:
    torch.manual_seed(0)
    labels = torch.tensor(
        [[IGNORE_INDEX, 5, 6, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3, 4]]
    )
    logits = torch.randn(2, 6, 12)
    micro_batches = [(logits[:1], labels[:1]), (logits[1:], labels[1:])]
    total_tokens = sum(count_loss_tokens(lab) for _, lab in micro_batches)
    step_loss = sum(summed_token_loss(lg, lab) for lg, lab in micro_batches) / total_tokens
    flat = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 12), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    row_means = torch.stack([summed_token_loss(lg, lab) / count_loss_tokens(lab) for lg, lab in micro_batches])
    torch.testing.assert_close(step_loss, flat)
    assert not torch.isclose(step_loss, row_means.mean())


def _prompted(prefix: tuple[int, ...], line: int, prompt: int, answer: int) -> TokenizedExample:
    """`prefix` (a system prompt every row shares), then a prompt and an answer of its own; loss on the answer."""
    rng = random.Random(line)
    own = tuple(rng.randrange(10, 500) for _ in range(prompt + answer))
    ids = prefix + own
    labels = tuple(IGNORE_INDEX if i < len(prefix) + prompt else t for i, t in enumerate(ids))
    return TokenizedExample(input_ids=ids, labels=labels, line=line)


SYSTEM = tuple(random.Random(99).randrange(10, 500) for _ in range(24))


def test_shared_prefix_rows_compute_what_each_example_computes_alone(tiny_base_dir: Path) -> None:
    """Examples behind one copy of their common prefix, in a batch with an ordinary packed row and
    padding: every token's logits equal the example's own, and the loss is the same token for token."""
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    shared = [
        _prompted(SYSTEM, line, prompt, answer) for line, (prompt, answer) in enumerate([(9, 5), (6, 8), (12, 4)])
    ]
    loose = [_example(n, line) for line, n in enumerate([20, 17], start=10)]
    rows = pack_examples(shared + loose, max_seq_len=64, share_prefix=True, pack_len=96)
    [prefixed] = [row for row in rows if row.prefix_len]
    assert prefixed.prefix_len == len(SYSTEM) and len(prefixed.lengths) == 3
    assert len(prefixed.input_ids) == sum(len(ex.input_ids) for ex in shared) - 2 * len(SYSTEM)
    batch = collate_packed(rows)
    assert batch["attention_mask"].shape == (len(rows), 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    members = {ex.input_ids: ex for ex in shared + loose}
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in ("input_ids", "position_ids", "attention_mask")}, use_cache=False).logits
        packed_loss = summed_token_loss(logits, batch["labels"])
        alone_loss = torch.zeros(())
        for row, seq in enumerate(rows):
            start, prefix = seq.prefix_len, seq.input_ids[: seq.prefix_len]
            for length in seq.lengths:
                example = members[prefix + seq.input_ids[start : start + length]]
                ids = torch.tensor([example.input_ids])
                alone = model(input_ids=ids, use_cache=False).logits
                alone_loss = alone_loss + summed_token_loss(alone, torch.tensor([example.labels]))
                torch.testing.assert_close(
                    logits[row, start : start + length], alone[0, seq.prefix_len :], atol=1e-5, rtol=0
                )
                if seq.prefix_len:
                    torch.testing.assert_close(
                        logits[row, : seq.prefix_len], alone[0, : seq.prefix_len], atol=1e-5, rtol=0
                    )
                start += length
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-4, rtol=1e-6)
    assert count_loss_tokens(batch["labels"]) == sum(ex.n_loss_tokens for ex in shared + loose)


def test_shared_prefix_never_holds_a_loss_token_and_needs_enough_tokens() -> None:
    # one member's answer starts inside the common tokens: the prefix stops before the token ahead of it
    early = _prompted(SYSTEM, 1, 0, 6)
    late = _prompted(SYSTEM, 2, 10, 6)
    [(shared, members)] = shared_prefixes([early, late])
    assert members == [0, 1] and shared == len(SYSTEM) - 1
    assert early.labels[shared] == IGNORE_INDEX and early.labels[shared + 1] != IGNORE_INDEX
    # fewer common tokens than MIN_SHARED_PREFIX: ordinary packing, positions restarting per example
    short = SYSTEM[: MIN_SHARED_PREFIX - 1]
    few = [_prompted(short + (7,) * 2, 3, 8, 4), _prompted(short + (8,) * 2, 4, 8, 4)]
    assert shared_prefixes(few) == []
    assert all(row.prefix_len == 0 for row in pack_examples(few, max_seq_len=64, share_prefix=True))


def test_a_group_member_alone_in_its_row_is_an_ordinary_row_and_a_row_holds_max_seq_len() -> None:
    big = [_prompted(SYSTEM, line, 20, 10) for line in range(2)]  # 54 tokens each: one a row at 64
    rows = pack_examples(big, max_seq_len=64, share_prefix=True)
    assert [row.prefix_len for row in rows] == [0, 0] and "attention_mask" not in collate_packed(rows)
    assert resolve_pack_len("auto", 256) == 256 and resolve_pack_len(512, 256) == 512
    assert resolve_pack_len(384, 448) == 448  # a row always holds the longest example
