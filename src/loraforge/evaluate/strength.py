"""The adapter's strength: the largest scale of the trained update that keeps what the base knew.

A narrow task pulls a small base's general answers a little off their path even with replay rows in
the mix: "Plants absorb gas from the air through a process called gas absorption" where the base
said carbon dioxide. Scaling the update (W + s * B @ A, s < 1) walks the adapter back toward the
base along the line training took; the task, learnt with a margin, keeps most of its gain, while
answers that sat one phrasing from failing come back (docs/PERFORMANCE.md, the demo's strength).

After training, each scale in `train.strength.scales` (largest first) answers the bundled
`selection` probes, knowledge questions disjoint from the gate's probes and from the replay prompts
(tests/test_probe_selection.py checks it, near-duplicates included), so nothing selects on a
question that judges it. The first scale that loses at most `train.strength.tolerance` of the
probes the base answers right is kept; when none does, the one that loses fewest (ties: the larger).
Only probes the base passes are asked of the adapter: one that the base fails cannot be lost.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from peft import PeftModel
from peft.tuners.lora import LoraLayer

from loraforge.config import EvalSpec
from loraforge.errors import EvalError
from loraforge.evaluate.probes import PROBE_MAX_NEW_TOKENS, load_probes
from loraforge.evaluate.runner import base_scored
from loraforge.evaluate.scoring import Case, RowResult, answer_and_score, cases_from_records, score_role
from loraforge.models import LoadedBase, merged_adapter

SELECTION_PROBES = "selection"  # evaluate/probes/selection.jsonl


@dataclass(frozen=True)
class StrengthChoice:
    scale: float
    lost: dict[float, int] = field(default_factory=dict)  # scale tried -> selection probes lost
    probes: int = 0  # selection probes the base answers right (the ones an adapter can lose)
    tolerance: int = 0
    seconds: float = 0.0
    lost_ids: dict[float, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "tried": [{"scale": s, "lost": n, "lost_ids": self.lost_ids.get(s, [])} for s, n in self.lost.items()],
            "probes": self.probes,
            "tolerance": self.tolerance,
            "seconds": round(self.seconds, 2),
        }


def check_scales(scales: Sequence[float]) -> list[float]:
    """Scales largest first, each in (0, 1]; raises EvalError naming the key otherwise."""
    bad = [s for s in scales if not 0.0 < s <= 1.0]
    if not scales or bad:
        raise EvalError(
            f"train.strength.scales={list(scales)}: each scale must be in (0, 1] and the list non-empty; "
            "use [1.0] to keep the adapter as trained"
        )
    return sorted(set(scales), reverse=True)


@contextlib.contextmanager
def scaled_adapter(model: PeftModel, scale: float) -> Iterator[None]:
    """While inside, every LoRA layer's active update is multiplied by `scale` (PEFT's per-layer
    `scaling`, which the forward and merge_adapter both read); restored exactly on the way out."""
    saved: list[tuple[dict[str, float], str, float]] = []
    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            for name in layer.active_adapters:
                if name in layer.scaling:
                    saved.append((layer.scaling, name, layer.scaling[name]))
                    layer.scaling[name] = layer.scaling[name] * scale
    try:
        yield
    finally:
        for scaling, name, value in saved:
            scaling[name] = value


def selection_cases() -> list[Case]:
    return cases_from_records(load_probes([SELECTION_PROBES]), PROBE_MAX_NEW_TOKENS, probe=True)


def choose_strength(
    base: LoadedBase,
    model: PeftModel,
    spec: EvalSpec,
    scales: Sequence[float],
    tolerance: int,
    chat_template: str,
    cases: Sequence[Case] | None = None,
) -> StrengthChoice:
    """Try `scales` largest first on the selection probes (or `cases`); see the module docstring."""
    started = time.perf_counter()
    ordered = check_scales(scales)
    cases = list(cases) if cases is not None else selection_cases()
    rows = [RowResult(case) for case in cases]
    lost: dict[float, int] = {}
    lost_ids: dict[float, list[str]] = {}
    was_training = model.training
    model.eval()
    try:
        answers, nll, _ = base_scored(
            base, model, cases, spec, chat_template, desc="strength: base", cache=spec.cache_base
        )
        score_role("base", rows, answers, nll)
        known = [row for row in rows if row.passed["base"]]
        for scale in ordered if known else ():  # nothing the base knows can be lost: keep it as trained
            with scaled_adapter(model, scale), merged_adapter(model, spec.merge):
                answers, nll = answer_and_score(
                    model, base.tokenizer, [row.case for row in known], spec.batch_size, f"strength x{scale:g}",
                    spec.give_up_after, chat_template=chat_template,
                )  # fmt: skip
            score_role("adapter", known, answers, nll)
            lost_ids[scale] = [row.case.id for row in known if not row.passed["adapter"]]
            lost[scale] = len(lost_ids[scale])
            if lost[scale] <= tolerance:
                break
    finally:
        model.train(was_training)
    if not lost:
        return StrengthChoice(ordered[0], {}, len(known), tolerance, time.perf_counter() - started)
    chosen = next((s for s in lost if lost[s] <= tolerance), None)
    if chosen is None:
        chosen = min(lost, key=lambda s: (lost[s], -s))
    return StrengthChoice(chosen, lost, len(known), tolerance, time.perf_counter() - started, lost_ids)
