"""How well the safety checks judge answers a person has labelled (safety_labelled.jsonl).

    python -m loraforge.evaluate.probes.labelled     # accuracy and confusion, new checks and old

Each labelled row names a bundled safety probe, an answer written for the purpose (or quoted from
a real run) and its human label: `harmful_help` or `no_help` on a harmful probe, `engaged` or
`dodged` on a benign one. A row is judged right when the probe's checks pass exactly on the
labels that should pass (`no_help`, `engaged`). The old checks (`refusal` / `not_refusal`, the
wording rule the bundled probes used before issue #19) are scored on the same rows for comparison.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from loraforge.errors import EvalError
from loraforge.evaluate.checks import CheckSpec, run_checks
from loraforge.evaluate.probes import PROBE_DIR, probe_path

LABELLED_PATH = PROBE_DIR / "safety_labelled.jsonl"
PASSING_LABELS = {"no_help": True, "harmful_help": False, "engaged": True, "dodged": False}


@dataclass(frozen=True)
class Labelled:
    line: int
    probe_id: str
    answer: str
    label: str
    kind: str  # what sort of answer it is: "clear refusal", "label answer", ...


@dataclass
class Confusion:
    """Counts of (human label, what the checks said) for one rule, and the rows it got wrong."""

    counts: Counter[tuple[str, bool]] = field(default_factory=Counter)
    wrong: list[tuple[Labelled, str]] = field(default_factory=list)  # row, the check's detail

    @property
    def right(self) -> int:
        return sum(n for (label, passed), n in self.counts.items() if PASSING_LABELS[label] == passed)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0


def read_labelled(path: Path = LABELLED_PATH) -> list[Labelled]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("label") not in PASSING_LABELS:
            known = ", ".join(PASSING_LABELS)
            raise EvalError(f"{path} line {line_no}: label {row.get('label')!r}; use one of {known}")
        rows.append(Labelled(line_no, row["id"], row["answer"], row["label"], row.get("kind", "")))
    return rows


def _old_checks(checks: tuple[CheckSpec, ...]) -> tuple[CheckSpec, ...]:
    harmful = any(c["type"] == "no_harmful_help" for c in checks)
    return ({"type": "refusal"},) if harmful else ({"type": "not_refusal"},)


def score(rows: list[Labelled], old: bool = False) -> Confusion:
    """The bundled safety probes' checks (or, with `old`, the wording rule) over labelled rows."""
    probes = {r["id"]: tuple(r["checks"]) for r in map(json.loads, probe_path("safety").read_text().splitlines())}
    confusion = Confusion()
    for row in rows:
        if row.probe_id not in probes:
            raise EvalError(f"{LABELLED_PATH} line {row.line}: no safety probe {row.probe_id!r}; use a bundled id")
        checks = _old_checks(probes[row.probe_id]) if old else probes[row.probe_id]
        outcomes = run_checks(checks, row.answer, "")
        passed = all(o.passed for o in outcomes)
        confusion.counts[(row.label, passed)] += 1
        if PASSING_LABELS[row.label] != passed:
            confusion.wrong.append((row, "; ".join(o.detail for o in outcomes if o.detail) or "passed"))
    return confusion


def render(name: str, confusion: Confusion) -> str:
    lines = [f"{name}: {confusion.right}/{confusion.total} right ({confusion.accuracy:.1%})"]
    lines.append(f"  {'label':<13} {'check passes':>12} {'check fails':>12}")
    for label in PASSING_LABELS:
        lines.append(f"  {label:<13} {confusion.counts[(label, True)]:>12} {confusion.counts[(label, False)]:>12}")
    for row, why in confusion.wrong:
        lines.append(f"  wrong: line {row.line} {row.probe_id} {row.label} ({row.kind}): {row.answer[:70]!r} -> {why}")
    return "\n".join(lines)


def main() -> int:
    rows = read_labelled()
    print(render("new checks (no_harmful_help / engages)", score(rows)))
    print(render("old checks (refusal / not_refusal)", score(rows, old=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
