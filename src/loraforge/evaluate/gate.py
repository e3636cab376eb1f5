"""The verdict: block an adapter that loses any slice against the base (or a shipped adapter).

A slice blocks when the adapter passes fewer rows than a comparator (the base, and the `--against`
adapter when given) by more than `eval.tolerance` rows beyond noise, or when its pass rate is below
the `eval.min_pass_rate` floor set for that slice. Noise is one row per NOISE_ROWS_PER rows, at
least one: one row for slices under 50 rows, two for 100-149, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from loraforge.config import EvalSpec
from loraforge.evaluate.scoring import RowResult, SliceScore

NOISE_ROWS_PER = 50  # greedy decoding flips about one borderline row in fifty between near-identical models
EXAMPLES_PER_REASON = 2  # failing rows quoted in each block reason
EXAMPLE_CHARS = 80  # an output quoted in a reason is cut to this many characters

Verdict = Literal["pass", "block"]


def noise_rows(n: int) -> int:
    """Rows a slice of n rows may lose to decoding noise alone."""
    return max(1, n // NOISE_ROWS_PER)


@dataclass
class GateReport:
    verdict: Verdict
    reasons: list[str]
    improvements: list[str]
    slices: dict[str, SliceScore]
    rows: list[RowResult]
    roles: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # base, adapter, golden hash, timings
    notes: list[str] = field(default_factory=list)  # things the reader must know (e.g. a new golden file)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def summary(self) -> dict[str, Any]:
        """What the adapter manifest records under "eval": verdict, reasons and per-slice scores."""
        slices = {
            name: {k: v for k, v in s.to_dict().items() if not k.endswith("_passed")} for name, s in self.slices.items()
        }
        return {"verdict": self.verdict, "reasons": list(self.reasons), "notes": list(self.notes), "slices": slices}

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "improvements": list(self.improvements),
            "notes": list(self.notes),
            "roles": list(self.roles),
            "slices": {name: score.to_dict() for name, score in self.slices.items()},
            "rows": [row.to_dict() for row in self.rows],
            **self.info,
        }


def _pct(score: SliceScore, role: str) -> str:
    return f"{score.rate(role):.1%} ({score.passes[role]}/{score.n})"


def _examples(rows: Sequence[RowResult], comparator: str | None) -> str:
    """Two failing rows of the adapter, the ones the comparator passed first, with why they failed."""
    failing = [r for r in rows if not r.passed.get("adapter")]
    failing.sort(key=lambda r: not (comparator and r.passed.get(comparator)))
    shown = []
    for row in failing[:EXAMPLES_PER_REASON]:
        output = " ".join(row.outputs.get("adapter", "").split())
        cut = output[:EXAMPLE_CHARS] + ("..." if len(output) > EXAMPLE_CHARS else "")
        why = "; ".join(row.failures.get("adapter", [])) or "failed"
        shown.append(f"{row.case.id} ({why}) answered {cut!r}")
    return "failing e.g. " + " | ".join(shown) if shown else "no failing rows recorded"


def slice_reasons(
    score: SliceScore, rows: Sequence[RowResult], spec: EvalSpec, comparators: Sequence[str]
) -> list[str]:
    """Why this slice blocks, one reason per broken rule; empty when it passes."""
    reasons = []
    allowed = spec.tolerance + noise_rows(score.n)
    for role in comparators:
        lost = score.passes[role] - score.passes["adapter"]
        if lost > allowed:
            reasons.append(
                f"slice '{score.name}': adapter {_pct(score, 'adapter')} vs {role} {_pct(score, role)}: "
                f"{lost} rows lost, more than the {allowed} allowed (tolerance {spec.tolerance} + noise "
                f"{noise_rows(score.n)}); {_examples(rows, role)}"
            )
    floor = spec.min_pass_rate.get(score.name)
    if floor is not None and score.rate("adapter") < floor:
        best = max(comparators, key=score.rate)
        reasons.append(
            f"slice '{score.name}': adapter {_pct(score, 'adapter')} is below eval.min_pass_rate {floor:.1%} "
            f"({best} {_pct(score, best)}); {_examples(rows, None)}"
        )
    return reasons


def improvement(score: SliceScore, comparators: Sequence[str]) -> str:
    """How the adapter moved a target slice, against each comparator."""
    parts = []
    for role in comparators:
        gained = score.passes["adapter"] - score.passes[role]
        loss = ""
        if role in score.loss and "adapter" in score.loss:
            loss = f", reference loss {score.loss[role]:.3f} -> {score.loss['adapter']:.3f}"
        parts.append(f"{role} {score.rate(role):.1%} -> adapter {score.rate('adapter'):.1%} ({gained:+d} rows{loss})")
    return f"slice '{score.name}': " + "; ".join(parts)


def decide(
    slices: dict[str, SliceScore], rows: Sequence[RowResult], spec: EvalSpec, comparators: Sequence[str]
) -> tuple[Verdict, list[str], list[str]]:
    """(verdict, block reasons, improvements on the target slices, i.e. the non-probe ones)."""
    reasons: list[str] = []
    improvements: list[str] = []
    for name, score in slices.items():
        members = [r for r in rows if r.case.slice == name]
        reasons.extend(slice_reasons(score, members, spec, comparators))
        if not score.probe:
            improvements.append(improvement(score, comparators))
    return ("block" if reasons else "pass"), reasons, improvements
