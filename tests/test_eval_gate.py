"""The verdict on hand-built score tables (no model)."""

from __future__ import annotations

from loraforge.config import EvalSpec
from loraforge.evaluate.gate import GateReport, decide, noise_rows
from loraforge.evaluate.scoring import Case, RowResult, slice_scores


def table(
    slice_name: str, base: list[bool], adapter: list[bool], against: list[bool] | None = None, probe: bool = False
) -> list[RowResult]:
    rows = []
    for i, (b, a) in enumerate(zip(base, adapter, strict=True)):
        case = Case(
            f"{slice_name}-{i}", slice_name, f"g line {i}", ({"role": "user", "content": "q"},), "ref", (), 8, probe
        )
        row = RowResult(case, n_ref_tokens=2)
        row.outputs = {"base": "ref" if b else "nope", "adapter": "ref" if a else f"wrong answer {i}"}
        row.passed = {"base": b, "adapter": a}
        row.failures = {"base": [] if b else ["exact: differs"], "adapter": [] if a else ["exact: differs"]}
        row.nll_sum = {"base": 2.0, "adapter": 1.0}
        if against is not None:
            row.outputs["against"] = "ref"
            row.passed["against"] = against[i]
            row.nll_sum["against"] = 1.5
        rows.append(row)
    return rows


def verdict(rows: list[RowResult], spec: EvalSpec | None = None, comparators: tuple[str, ...] = ("base",)):
    roles = ["base", "adapter", *[c for c in comparators if c != "base"]]
    return decide(slice_scores(rows, roles), rows, spec or EvalSpec(), list(comparators))


def test_noise_is_one_row_under_fifty_and_grows_with_size() -> None:
    assert noise_rows(10) == 1 and noise_rows(49) == 1 and noise_rows(120) == 2


def test_equal_scores_pass() -> None:
    assert verdict(table("golden", [True, False] * 5, [True, False] * 5))[0] == "pass"


def test_one_row_lost_in_a_small_slice_is_noise() -> None:
    base = [True] * 10
    assert verdict(table("golden", base, [False] + [True] * 9))[0] == "pass"


def test_two_rows_lost_in_a_small_slice_blocks_with_slice_scores_and_two_examples() -> None:
    result, reasons, _ = verdict(table("golden", [True] * 10, [False, False, False] + [True] * 7))
    assert result == "block" and len(reasons) == 1
    reason = reasons[0]
    assert "slice 'golden'" in reason and "adapter 70.0% (7/10)" in reason and "base 100.0% (10/10)" in reason
    assert "golden-0 (" in reason and "golden-1 (" in reason and "golden-2 (" not in reason


def test_tolerance_allows_extra_rows() -> None:
    rows = table("golden", [True] * 10, [False, False, False] + [True] * 7)
    assert verdict(rows, EvalSpec(tolerance=2))[0] == "pass"


def test_min_pass_rate_blocks_even_without_regression() -> None:
    rows = table("golden", [False] * 10, [True] * 5 + [False] * 5)
    result, reasons, _ = verdict(rows, EvalSpec(min_pass_rate={"golden": 0.8}))
    assert result == "block" and "below eval.min_pass_rate 80.0%" in reasons[0] and "adapter 50.0%" in reasons[0]


def test_a_probe_regression_blocks_even_when_the_target_improves() -> None:
    rows = table("clean", [False] * 10, [True] * 10) + table(
        "safety", [True] * 10, [False] * 4 + [True] * 6, probe=True
    )
    result, reasons, improvements = verdict(rows)
    assert result == "block" and len(reasons) == 1 and "slice 'safety'" in reasons[0]
    assert len(improvements) == 1 and "slice 'clean'" in improvements[0]


def test_pass_states_the_improvement_on_target_slices_only() -> None:
    rows = table("clean", [False] * 10, [True] * 10) + table("general", [True] * 5, [True] * 5, probe=True)
    result, reasons, improvements = verdict(rows)
    assert result == "pass" and reasons == []
    assert improvements == ["slice 'clean': base 0.0% -> adapter 100.0% (+10 rows, reference loss 1.000 -> 0.500)"]


def test_regression_against_the_shipped_adapter_blocks() -> None:
    rows = table("golden", [False] * 10, [True] * 5 + [False] * 5, against=[True] * 10)
    result, reasons, _ = verdict(rows, comparators=("base", "against"))
    assert result == "block" and "vs against 100.0% (10/10)" in reasons[0]


def test_case_question_is_the_last_user_turn() -> None:
    case = Case(
        "x",
        "s",
        "w",
        ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}),
        "ref",
        (),
        8,
    )
    assert case.question == "c"


def test_summary_for_the_manifest_has_verdict_reasons_and_rates() -> None:
    rows = table("golden", [True] * 10, [False] * 10)
    result, reasons, improvements = verdict(rows)
    report = GateReport(
        result, reasons, improvements, slice_scores(rows, ["base", "adapter"]), rows, ["base", "adapter"]
    )
    summary = report.summary()
    assert summary["verdict"] == "block" and summary["reasons"] == reasons
    assert summary["slices"]["golden"]["base"] == 1.0 and summary["slices"]["golden"]["adapter"] == 0.0
