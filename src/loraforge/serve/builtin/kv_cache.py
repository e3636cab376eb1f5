"""The KV cache: one preallocated tensor per layer for keys and one for values, a row per running
sequence, rows kept contiguous (0..n-1).

Layout `(rows, kv_heads, positions, head_dim)`. Keeping the running rows contiguous makes the
decode step's keys a view (`keys[:n, :, :longest]`), never a gather; a sequence that leaves has the
last row moved into its place (one row copied per layer, once per finish). Both dimensions grow by
doubling, so memory follows the batch and the longest sequence actually served, up to `max_rows`
and the model's context length; an empty cache drops its tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_POSITIONS = 64  # first allocation: short chats never regrow


class KVCache:
    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        max_rows: int,
        max_positions: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_rows, self.max_positions = max_rows, max_positions
        self.dtype, self.device = dtype, device
        self.lengths: list[int] = []  # tokens cached per row, rows 0..n_rows-1
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def n_rows(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, positions) allocated now."""
        return (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)

    def add_row(self, length: int) -> int:
        """A row for a sequence of `length` tokens about to be prefilled; returns its index."""
        rows, positions = self.capacity
        if self.n_rows + 1 > rows:
            rows = min(self.max_rows, max(self.n_rows + 1, 2 * rows))
        self._grow(rows, max(positions, self._round_up(length)))
        self.lengths.append(0)
        return self.n_rows - 1

    def remove_row(self, row: int) -> int | None:
        """Free `row`; the last row moves into it. Returns the moved row's old index (None if none moved)."""
        last = self.n_rows - 1
        self.lengths[row] = self.lengths[last]
        self.lengths.pop()
        if not self.lengths:
            self.keys, self.values = [], []  # idle: hand the memory back
            return None
        if row == last:
            return None
        keep = self.lengths[row]
        for tensors in (self.keys, self.values):
            for layer in tensors:
                layer[row, :, :keep] = layer[last, :, :keep]
        return last

    def reserve_step(self) -> None:
        """Room for one more token in every row (call before a decode step)."""
        longest = max(self.lengths) + 1
        rows, positions = self.capacity
        if longest > positions:
            self._grow(rows, self._round_up(longest))

    def _round_up(self, length: int) -> int:
        size = MIN_POSITIONS
        while size < length:
            size *= 2
        return min(max(size, length), self.max_positions)

    def _grow(self, rows: int, positions: int) -> None:
        if (rows, positions) == self.capacity:
            return
        shape = (rows, self.n_kv_heads, positions, self.head_dim)
        old_rows, old_positions = self.capacity
        for tensors in (self.keys, self.values):
            grown = []
            for layer in range(self.n_layers):
                fresh = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if old_rows:
                    fresh[:old_rows, :, :old_positions] = tensors[layer]
                grown.append(fresh)
            tensors[:] = grown


class PrefillAttention:
    """One new sequence: causal attention over its prompt, its keys and values written to `row`."""

    def __init__(self, cache: KVCache, row: int) -> None:
        self.cache, self.row = cache, row
        self.length = 0

    def commit(self) -> None:
        """The forward ran through every layer: the row now holds the prompt."""
        self.cache.lengths[self.row] = self.length

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        length = k.shape[2]
        self.cache.keys[layer][self.row, :, :length] = k[0]
        self.cache.values[layer][self.row, :, :length] = v[0]
        self.length = length
        return F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, enable_gqa=True)


class DecodeAttention:
    """One token for each of rows 0..n-1, written at each row's length, attending to its own cache."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        n = cache.n_rows
        self.rows = torch.arange(n, device=cache.device)
        self.positions = torch.tensor(cache.lengths, device=cache.device)
        self.longest = max(cache.lengths) + 1
        # True where a row may look: its cached tokens and the new one; padding past it stays out
        visible = torch.arange(self.longest, device=cache.device)[None, :] <= self.positions[:, None]
        self.mask = visible[:, None, None, :]

    def commit(self) -> None:
        """The forward ran through every layer: each row holds one more token."""
        self.cache.lengths = [length + 1 for length in self.cache.lengths]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[self.rows, :, self.positions] = k[:, :, 0]
        values[self.rows, :, self.positions] = v[:, :, 0]
        n = len(self.rows)
        return F.scaled_dot_product_attention(
            q,
            keys[:n, :, : self.longest],
            values[:n, :, : self.longest],
            attn_mask=self.mask,
            enable_gqa=True,
        )
