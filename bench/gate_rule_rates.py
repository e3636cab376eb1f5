"""How often the gate's slice rule blocks by chance and how often it passes a worse adapter, by
exact enumeration over the paired outcomes of a slice (no model: importing loraforge, i.e. torch, takes
longer than the arithmetic).

  python bench/gate_rule_rates.py [--flip 0.10] [--sizes 10 25 50 200]

Each case flips between base and adapter with probability FLIP, half each way (an adapter equal
in quality, its differences greedy noise); an adapter truly worse by D points loses a further D
of the cases on top. The rule is the gate's own (loraforge.evaluate.gate.PairedLoss.blocks), with
eval.tolerance 0; the old rule (block when the net loss is over one row per 50, at least one) is
shown beside it. The table in docs/eval-gate.md#the-verdict is this command's output.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from loraforge.evaluate.gate import PairedLoss

NEGLIGIBLE_LOG_PMF = math.log(1e-12)  # outcomes rarer than this change no printed figure
Rule = Callable[[int, int, int], bool]  # (rows, lost, gained) -> blocks


def new_rule(n: int, lost: int, gained: int) -> bool:
    return PairedLoss(n, lost, gained).blocks


def old_rule(n: int, lost: int, gained: int) -> bool:
    return lost - gained > max(1, n // 50)


def block_rate(rule: Rule, n: int, p_lost: float, p_gained: float) -> float:
    """P(rule blocks) when each of n cases is lost with p_lost, gained with p_gained, else unchanged."""
    p_same = 1.0 - p_lost - p_gained
    total = 0.0
    for lost in range(n + 1):
        for gained in range(n - lost + 1):
            same = n - lost - gained
            log_pmf = math.lgamma(n + 1) - math.lgamma(lost + 1) - math.lgamma(gained + 1) - math.lgamma(same + 1)
            log_pmf += _log(p_lost, lost) + _log(p_gained, gained) + _log(p_same, same)
            if log_pmf > NEGLIGIBLE_LOG_PMF and rule(n, lost, gained):
                total += math.exp(log_pmf)
    return total


def _log(p: float, k: int) -> float:
    return 0.0 if k == 0 else (k * math.log(p) if p > 0 else -math.inf)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flip", type=float, default=0.10, help="share of cases that flip with no real change")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50, 200])
    args = parser.parse_args()
    half = args.flip / 2
    print(f"per-case flip noise {args.flip:.0%} (half each way); worse by D: D more of the cases lost")
    print()
    print("| rows | rule | blocked by chance (equal) | passed, 10 points worse | passed, 20 points worse |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        for name, rule in (("gate", new_rule), ("old: 1 row per 50", old_rule)):
            chance = block_rate(rule, n, half, half)
            miss10 = 1 - block_rate(rule, n, half + 0.10, half)
            miss20 = 1 - block_rate(rule, n, half + 0.20, half)
            print(f"| {n} | {name} | {chance:.1%} | {miss10:.1%} | {miss20:.1%} |")


if __name__ == "__main__":
    main()
