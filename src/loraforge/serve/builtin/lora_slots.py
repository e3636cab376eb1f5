"""Adapter slots: up to `max_loaded` adapters stacked per module, and the per-row LoRA update.

Per target module the factors of every slot live in one tensor: `a[module]` is
(slots, rank, in_features) and `b[module]` is (out_features, slots, rank), ranks padded with zeros
to the largest loaded rank (a zero row of A and zero column of B add nothing). A forward over rows
that use slots U (the base is slot -1) gathers those slots once per module and runs two dense
matmuls over all rows: `x @ A_U.T` gives every row its update through each of the U adapters, a
per-row weight keeps only its own adapter's columns (times its scale, zero for the base), and
`@ B_U.T` maps back. That is a grouped matmul with no Python loop over adapters and no split of
the batch; it does U times the rank work of one adapter, which is small next to the base linear
while U * rank stays under in_features (docs/serve-engine.md).

Slots are keyed by `AdapterWeights.key`, loaded on first use, and kept in least-recently-used
order; a slot no running sequence uses may be evicted for a new adapter, and when every slot is in
use the request waits (`acquire` returns None).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from loraforge.errors import ModelError
from loraforge.serve.engine import AdapterWeights

BASE = -1  # the slot of a row that runs the bare base


class AdapterSlots:
    def __init__(
        self,
        module_shapes: Mapping[str, tuple[int, int]],
        max_loaded: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if max_loaded < 1:
            raise ModelError(f"BuiltinEngine: max_loaded={max_loaded}; keep at least 1 adapter slot")
        self.module_shapes = dict(module_shapes)
        self.max_loaded = max_loaded
        self.dtype, self.device = dtype, device
        self.rank = 0  # padded rank of every stack
        self.a: dict[str, torch.Tensor] = {}  # module -> (slots, rank, in); only modules some adapter targets
        self.b: dict[str, torch.Tensor] = {}  # module -> (out, slots, rank)
        self.scale = torch.zeros(max_loaded, dtype=dtype, device=device)
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # key -> slot, least recently used first
        self._users = [0] * max_loaded  # running sequences per slot
        self._free = list(range(max_loaded - 1, -1, -1))
        self.load_seconds: list[float] = []  # AdapterWeights -> slot, per cold load
        self.evictions = 0

    @property
    def loaded(self) -> int:
        return len(self._slot_of)

    def acquire(self, adapter: AdapterWeights) -> int | None:
        """The slot serving `adapter` for one more sequence, loading it if needed; None when every
        slot is in use by a running sequence (the request waits). Raises ModelError for factors that
        do not fit the base, before anything is evicted."""
        slot = self._slot_of.get(adapter.key)
        if slot is None:
            check_factors(adapter, self.module_shapes)
            slot = self._take_slot()
            if slot is None:
                return None
            self._load(adapter, slot)
            self._slot_of[adapter.key] = slot
        self._slot_of.move_to_end(adapter.key)
        self._users[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        if slot != BASE:
            self._users[slot] -= 1

    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        for key, slot in self._slot_of.items():  # least recently used first
            if self._users[slot] == 0:
                del self._slot_of[key]
                self.evictions += 1
                return slot
        return None

    def _load(self, adapter: AdapterWeights, slot: int) -> None:
        started = time.perf_counter()
        largest = max(int(a.shape[0]) for a, _ in adapter.factors.values())
        if largest > self.rank:
            self._pad_rank(largest)
        for module in self.a:  # an evicted adapter may have targeted modules this one does not
            self.a[module][slot].zero_()
            self.b[module][:, slot].zero_()
        for module, (a, b) in adapter.factors.items():
            if module not in self.a:
                self._add_module(module)
            rank = int(a.shape[0])
            self.a[module][slot, :rank] = a.to(self.device, self.dtype)
            self.b[module][:, slot, :rank] = b.to(self.device, self.dtype)
        self.scale[slot] = adapter.scale
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.load_seconds.append(time.perf_counter() - started)

    def _add_module(self, module: str) -> None:
        fan_in, fan_out = self.module_shapes[module]
        self.a[module] = torch.zeros(self.max_loaded, self.rank, fan_in, dtype=self.dtype, device=self.device)
        self.b[module] = torch.zeros(fan_out, self.max_loaded, self.rank, dtype=self.dtype, device=self.device)

    def _pad_rank(self, rank: int) -> None:
        for module, a in self.a.items():
            self.a[module] = F.pad(a, (0, 0, 0, rank - self.rank))
            self.b[module] = F.pad(self.b[module], (0, rank - self.rank))
        self.rank = rank

    def batch(self, row_slots: Sequence[int]) -> LoraBatch | None:
        """The update for a forward whose row i runs slot row_slots[i]; None when every row is the base."""
        used = sorted({s for s in row_slots if s != BASE})
        if not used:
            return None
        return LoraBatch(self, row_slots, used)


class LoraBatch:
    """One forward's per-row LoRA update over the slots its rows use."""

    def __init__(self, slots: AdapterSlots, row_slots: Sequence[int], used: list[int]) -> None:
        self.slots = slots
        self.used = torch.tensor(used, device=slots.device)
        rank = slots.rank
        self.uniform = len(used) == 1 and all(s == used[0] for s in row_slots)
        if self.uniform:  # one adapter on every row (a prefill, a one-adapter batch): no per-row weight
            self.weight: torch.Tensor | float = float(slots.scale[used[0]].item())
        else:
            column = {slot: i for i, slot in enumerate(used)}
            weight = torch.zeros(len(row_slots), len(used), rank, dtype=slots.dtype, device=slots.device)
            for row, slot in enumerate(row_slots):
                if slot != BASE:
                    weight[row, column[slot]] = slots.scale[slot]
            self.weight = weight.view(len(row_slots), 1, len(used) * rank)  # broadcast over positions

    def delta(self, module: str, x: torch.Tensor) -> torch.Tensor | None:
        """x: (rows, L, in) -> (rows, L, out), or None if no loaded adapter targets `module`."""
        a, b = self.slots.a.get(module), self.slots.b.get(module)
        if a is None or b is None:
            return None
        n_used, rank = len(self.used), self.slots.rank
        a_used = a.index_select(0, self.used).view(n_used * rank, a.shape[2])
        b_used = b.index_select(1, self.used).view(b.shape[0], n_used * rank)
        return F.linear(F.linear(x, a_used) * self.weight, b_used)


def check_factors(adapter: AdapterWeights, module_shapes: Mapping[str, tuple[int, int]]) -> None:
    """Every problem with `adapter`'s factors against the base, raised at once."""
    problems = []
    if not adapter.factors:
        problems.append("it has no LoRA factors")
    if not math.isfinite(adapter.scale):
        problems.append(f"scale {adapter.scale} is not finite")
    for module, (a, b) in sorted(adapter.factors.items()):
        shape = module_shapes.get(module)
        if shape is None:
            problems.append(f"{module} is not an adaptable linear of this base (q/k/v/o/gate/up/down_proj)")
            continue
        fan_in, fan_out = shape
        rank = a.shape[0] if a.dim() == 2 else -1
        if a.dim() != 2 or a.shape[1] != fan_in or b.dim() != 2 or tuple(b.shape) != (fan_out, rank):
            problems.append(
                f"{module}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit ({fan_out}, {fan_in}); "
                f"want A (r, {fan_in}) and B ({fan_out}, r)"
            )
    if problems:
        raise ModelError(
            f"adapter {adapter.key} ({adapter.path}): " + "; ".join(problems) + "; it was made for another base "
            "or another LoRA variant, retrain or re-export it on this base"
        )
