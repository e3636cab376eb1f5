"""The verdict: block an adapter that loses any slice against the base (or a shipped adapter).

Each slice is compared case by case with each comparator (the base, and the `--against` adapter
when given): `lost` rows the comparator passed and the adapter failed, `gained` the reverse. After
forgiving `eval.tolerance` lost rows, the slice blocks when

- the losses are significant: one-sided exact McNemar (sign) test on the lost vs gained rows,
  p < FALSE_BLOCK_RATE; or
- the net loss (lost - gained) is more than a tenth of the slice's rows, rounded down
  (ROWS_PER_ALLOWED_LOSS): the test cannot see a loss on a small slice (it needs five lost rows
  and none gained at 5%), so a slice under ten rows blocks on any net loss;

or when its pass rate is below the `eval.min_pass_rate` floor set for that slice. Rates for both
rules by slice size: docs/eval-gate.md#the-verdict (bench/gate_rule_rates.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from loraforge.config import EvalSpec
from loraforge.evaluate.scoring import RowResult, SliceScore

# one gate in twenty at most blocks an adapter no worse than its comparator whose losses are only
# greedy flips (the test is exact, so its real rate is lower); stricter needs twice the rows to see the same loss
FALSE_BLOCK_RATE = 0.05
# a slice may lose at most one row in ten, significant or not: a probe of 26 rows losing 4 of 4
# flipped rows (p = 0.0625) is 15 points worse, which no reader calls noise
ROWS_PER_ALLOWED_LOSS = 10
EXAMPLES_PER_REASON = 2  # failing rows quoted in each block reason
EXAMPLE_CHARS = 80  # an output quoted in a reason is cut to this many characters

Verdict = Literal["pass", "block"]


def mcnemar_p(lost: int, gained: int) -> float:
    """One-sided exact McNemar p-value: the chance of at least `lost` of the lost + gained flipped
    rows falling on the adapter's losing side when each flip goes either way with even odds."""
    flipped = lost + gained
    return sum(math.comb(flipped, k) for k in range(lost, flipped + 1)) / 2**flipped


def allowed_net_loss(n: int) -> int:
    """Net rows a slice of n rows may lose when the loss is not significant."""
    return n // ROWS_PER_ALLOWED_LOSS


@dataclass(frozen=True)
class PairedLoss:
    """A slice's rows that one comparator passed and the adapter failed (lost), and the reverse."""

    n: int
    lost: int
    gained: int
    tolerance: int = 0

    @property
    def counted(self) -> int:
        """Lost rows after `eval.tolerance` forgives some."""
        return max(0, self.lost - self.tolerance)

    @property
    def net(self) -> int:
        return self.counted - self.gained

    @property
    def p(self) -> float:
        return mcnemar_p(self.counted, self.gained)

    @property
    def significant(self) -> bool:
        return self.p < FALSE_BLOCK_RATE

    @property
    def over_cap(self) -> bool:
        return self.net > allowed_net_loss(self.n)

    @property
    def blocks(self) -> bool:
        return self.significant or self.over_cap

    def why(self) -> str:
        """Which rule blocks, with its figures."""
        forgiven = f" after eval.tolerance {self.tolerance}" if self.tolerance else ""
        rules = []
        if self.significant:
            rules.append(f"significant (McNemar p={self.p:.3f} < {FALSE_BLOCK_RATE})")
        if self.over_cap:
            rules.append(f"a net loss of {self.net}, over the {allowed_net_loss(self.n)} a {self.n}-row slice may lose")
        return f"{self.lost} rows lost, {self.gained} gained{forgiven}: " + " and ".join(rules)


def paired_loss(rows: Sequence[RowResult], role: str, tolerance: int = 0) -> PairedLoss:
    lost = sum(1 for r in rows if r.passed.get(role) and not r.passed.get("adapter"))
    gained = sum(1 for r in rows if r.passed.get("adapter") and not r.passed.get(role))
    return PairedLoss(len(rows), lost, gained, tolerance)


# What to change, cheapest first (docs/troubleshooting.md#the-gate-blocked). A probe slice that
# drops is forgetting: pull the adapter back toward the base away from the task.
FORGETTING_LEVERS = (
    "add a smaller scale to train.strength.scales (e.g. 0.7) or pass your own train.strength.probes",
    "raise data.replay_ratio (replay rows from `loraforge distill` in data.replay)",
    "turn on or raise train.replay_kl",
    "lower train.lr or train.epochs",
)
# A target slice that drops or stays under its floor has not learned the task (or learned a
# different one): train more, or check that the rows teach what the golden rows ask.
TARGET_LEVERS = (
    "raise train.epochs (or train.max_steps) or train.lr",
    "check that the training rows and the chat template (data.template) match the slice's golden rows",
)


def slice_levers(score: SliceScore) -> list[str]:
    """The config keys that move this slice, cheapest first."""
    return list(FORGETTING_LEVERS if score.probe else TARGET_LEVERS)


def _fix(score: SliceScore) -> str:
    return "fix: " + "; or ".join(slice_levers(score))


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
    levers: dict[str, list[str]] = field(default_factory=dict)  # blocking slice -> what to change, cheapest first
    advisory: list[str] = field(default_factory=list)  # what judge slices below eval.judge.min_agreement found
    prompting: list[str] = field(default_factory=list)  # per target slice: does the adapter beat few-shot prompting

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def summary(self) -> dict[str, Any]:
        """What the adapter manifest records under "eval": verdict, reasons and per-slice scores."""
        slices = {
            name: {k: v for k, v in s.to_dict().items() if not k.endswith("_passed") and k != "judge"}
            for name, s in self.slices.items()
        }
        judged = {name: s.judge for name, s in self.slices.items() if s.judge is not None}
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "advisory": list(self.advisory),
            "notes": list(self.notes),
            "slices": slices,
            **({"judge": judged} if judged else {}),
            **({"prompting": list(self.prompting)} if self.prompting else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "levers": {name: list(keys) for name, keys in self.levers.items()},
            "advisory": list(self.advisory),
            "improvements": list(self.improvements),
            "prompting": list(self.prompting),
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
    """Why this slice blocks, one line per broken rule, each naming what to change; empty when it passes."""
    reasons = []
    for role in comparators:
        loss = paired_loss(rows, role, spec.tolerance)
        if loss.blocks:
            reasons.append(
                f"slice '{score.name}': adapter {_pct(score, 'adapter')} vs {role} {_pct(score, role)}: "
                f"{loss.why()}; {_fix(score)}; {_examples(rows, role)}"
            )
    floor = spec.min_pass_rate.get(score.name)
    if floor is not None and score.rate("adapter") < floor:
        best = max(comparators, key=score.rate)
        reasons.append(
            f"slice '{score.name}': adapter {_pct(score, 'adapter')} is below eval.min_pass_rate {floor:.1%} "
            f"({best} {_pct(score, best)}); {_fix(score)}; {_examples(rows, None)}"
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


def _rows(n: int) -> str:
    return "row" if abs(n) == 1 else "rows"


def prompting_line(score: SliceScore, rows: Sequence[RowResult], role: str = "few_shot") -> str:
    """Whether the adapter beats the prompting baseline on a target slice, by how much, and how sure."""
    adapter, shots = score.rate("adapter"), score.rate(role)
    diff = score.passes["adapter"] - score.passes[role]
    loss = paired_loss(rows, role)  # lost: rows few-shot passed and the adapter failed
    figures = f"adapter {_pct(score, 'adapter')} vs few-shot {_pct(score, role)}, base {_pct(score, 'base')}"
    if diff > 0:
        p = mcnemar_p(loss.gained, loss.lost)
        sure = "significant" if p < FALSE_BLOCK_RATE else "not significant on this many rows"
        verdict = (
            f"the adapter beats prompting by {adapter - shots:.1%} ({diff:+d} {_rows(diff)}; McNemar p={p:.3g}, {sure})"
        )
    elif diff == 0:
        verdict = "prompting does as well as the adapter: a prompt with these examples may be all this slice needs"
    else:
        p = mcnemar_p(loss.lost, loss.gained)
        verdict = (
            f"prompting beats the adapter by {shots - adapter:.1%} ({-diff} {_rows(diff)}; McNemar p={p:.3g}): "
            "try the prompt before shipping the adapter, or train more (raise train.epochs or train.lr)"
        )
    return f"slice '{score.name}': {verdict}; {figures}"


def prompting_lines(slices: dict[str, SliceScore], rows: Sequence[RowResult], role: str = "few_shot") -> list[str]:
    """prompting_line for each target slice the baseline answered."""
    return [
        prompting_line(score, [r for r in rows if r.case.slice == name], role)
        for name, score in slices.items()
        if not score.probe and role in score.passes and "adapter" in score.passes
    ]


class Decision(NamedTuple):
    verdict: Verdict
    reasons: list[str]
    improvements: list[str]  # how the target slices (the non-probe ones) moved
    levers: dict[str, list[str]]  # blocking slice -> what to change
    advisory: list[str]  # what judge slices that may not decide found (a block reason or a pass)


def decides(score: SliceScore) -> bool:
    """A slice decides the verdict unless its judge is below eval.judge.min_agreement or uncalibrated."""
    return score.judge is None or bool(score.judge["decides"])


def decide(
    slices: dict[str, SliceScore], rows: Sequence[RowResult], spec: EvalSpec, comparators: Sequence[str]
) -> Decision:
    """The verdict, its block reasons, the improvements on the target slices and each blocking slice's levers.

    A judge slice that may not decide (`decides`) is scored and its findings are kept as advisory,
    but it neither blocks nor, when it is all there is, passes: with no deciding slice the gate blocks."""
    reasons: list[str] = []
    improvements: list[str] = []
    levers: dict[str, list[str]] = {}
    advisory: list[str] = []
    for name, score in slices.items():
        members = [r for r in rows if r.case.slice == name]
        found = slice_reasons(score, members, spec, comparators)
        if not decides(score):
            why = (score.judge or {}).get("why", "")
            advisory += [f"{r} [advisory: {why}]" for r in found] or [f"slice '{name}': would pass [advisory: {why}]"]
        else:
            reasons.extend(found)
            if found:
                levers[name] = slice_levers(score)
        if not score.probe:
            improvements.append(improvement(score, comparators))
    if slices and not any(decides(s) for s in slices.values()):
        reasons.append(
            "no slice can decide: every slice asks a judge that is uncalibrated or below eval.judge.min_agreement; "
            "calibrate it (`loraforge eval calibrate-judge`), use a judge that agrees with people, or add checks "
            "or probes that decide on their own"
        )
    return Decision("block" if reasons else "pass", reasons, improvements, levers, advisory)
