"""The verdict on hand-built score tables (no model)."""

from __future__ import annotations

from loraforge.config import EvalSpec
from loraforge.evaluate.gate import Decision, GateReport, decide, mcnemar_p
from loraforge.evaluate.report import render_html, render_markdown
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


def verdict(rows: list[RowResult], spec: EvalSpec | None = None, comparators: tuple[str, ...] = ("base",)) -> Decision:
    roles = ["base", "adapter", *[c for c in comparators if c != "base"]]
    return decide(slice_scores(rows, roles), rows, spec or EvalSpec(), list(comparators))


def test_mcnemar_p_is_the_one_sided_sign_test_tail() -> None:
    assert mcnemar_p(5, 0) == 1 / 32 and mcnemar_p(4, 2) == 22 / 64 and mcnemar_p(0, 0) == 1.0


def test_a_one_row_slice_that_loses_its_row_blocks() -> None:
    result, reasons, _, *_ = verdict(table("golden", [True], [False]))
    assert result == "block" and "a net loss of 1, over the 0 a 1-row slice may lose" in reasons[0]


def test_significant_losses_block_a_large_slice_below_a_tenth() -> None:
    base = [True] * 300
    result, reasons, _, *_ = verdict(table("golden", base, [False] * 6 + [True] * 294))
    assert result == "block" and "significant (McNemar p=0.016 < 0.05)" in reasons[0]
    assert "over the" not in reasons[0]  # 6 rows is under a tenth of 300: the test alone blocks


def test_an_insignificant_loss_within_a_tenth_passes() -> None:
    base = [True] * 5 + [False] + [True] * 44
    adapter = [False] * 5 + [True] + [True] * 44  # 5 lost, 1 gained: p = 7/64, net 4 of the 5 allowed
    assert verdict(table("golden", base, adapter)).verdict == "pass"


def test_gained_rows_offset_lost_ones() -> None:
    base = [True] * 4 + [False] * 3 + [True] * 3
    adapter = [False] * 4 + [True] * 3 + [True] * 3  # 4 lost, 3 gained: net 1 of the 1 allowed in 10 rows
    assert verdict(table("golden", base, adapter)).verdict == "pass"


def test_equal_scores_pass() -> None:
    assert verdict(table("golden", [True, False] * 5, [True, False] * 5))[0] == "pass"


def test_one_row_lost_in_ten_passes() -> None:
    base = [True] * 10
    assert verdict(table("golden", base, [False] + [True] * 9))[0] == "pass"


def test_three_rows_lost_in_ten_block_with_slice_scores_and_two_examples() -> None:
    result, reasons, _, *_ = verdict(table("golden", [True] * 10, [False, False, False] + [True] * 7))
    assert result == "block" and len(reasons) == 1
    reason = reasons[0]
    assert "slice 'golden'" in reason and "adapter 70.0% (7/10)" in reason and "base 100.0% (10/10)" in reason
    assert "golden-0 (" in reason and "golden-1 (" in reason and "golden-2 (" not in reason


def test_tolerance_forgives_lost_rows_before_the_rule() -> None:
    rows = table("golden", [True] * 10, [False, False, False] + [True] * 7)
    assert verdict(rows, EvalSpec(tolerance=2))[0] == "pass"


def test_min_pass_rate_blocks_even_without_regression() -> None:
    rows = table("golden", [False] * 10, [True] * 5 + [False] * 5)
    result, reasons, _, *_ = verdict(rows, EvalSpec(min_pass_rate={"golden": 0.8}))
    assert result == "block" and "below eval.min_pass_rate 80.0%" in reasons[0] and "adapter 50.0%" in reasons[0]


def test_a_probe_regression_blocks_even_when_the_target_improves() -> None:
    rows = table("clean", [False] * 10, [True] * 10) + table(
        "safety", [True] * 10, [False] * 4 + [True] * 6, probe=True
    )
    result, reasons, improvements, *_ = verdict(rows)
    assert result == "block" and len(reasons) == 1 and "slice 'safety'" in reasons[0]
    assert len(improvements) == 1 and "slice 'clean'" in improvements[0]


def test_pass_states_the_improvement_on_target_slices_only() -> None:
    rows = table("clean", [False] * 10, [True] * 10) + table("general", [True] * 5, [True] * 5, probe=True)
    result, reasons, improvements, *_ = verdict(rows)
    assert result == "pass" and reasons == []
    assert improvements == ["slice 'clean': base 0.0% -> adapter 100.0% (+10 rows, reference loss 1.000 -> 0.500)"]


def test_regression_against_the_shipped_adapter_blocks() -> None:
    rows = table("golden", [False] * 10, [True] * 5 + [False] * 5, against=[True] * 10)
    result, reasons, _, *_ = verdict(rows, comparators=("base", "against"))
    assert result == "block" and "vs against 100.0% (10/10)" in reasons[0]


def test_a_one_row_loss_against_the_shipped_adapter_blocks() -> None:
    rows = table("golden", [False], [False], against=[True])
    result, reasons, _, *_ = verdict(rows, comparators=("base", "against"))
    assert result == "block" and len(reasons) == 1 and "vs against" in reasons[0]


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
    result, reasons, improvements, *_ = verdict(rows)
    report = GateReport(
        result, reasons, improvements, slice_scores(rows, ["base", "adapter"]), rows, ["base", "adapter"]
    )
    summary = report.summary()
    assert summary["verdict"] == "block" and summary["reasons"] == reasons
    assert summary["slices"]["golden"]["base"] == 1.0 and summary["slices"]["golden"]["adapter"] == 0.0


def test_a_probe_block_names_the_forgetting_levers() -> None:
    rows = table("safety", [True] * 10, [False] * 5 + [True] * 5, probe=True)
    reason = verdict(rows).reasons[0]
    fix = reason.split("; fix: ")[1]
    assert "data.replay_ratio" in fix and "train.replay_kl" in fix and "lower train.lr or train.epochs" in fix
    assert "\n" not in reason


def test_a_target_slice_below_its_floor_names_the_training_levers() -> None:
    rows = table("clean", [False] * 10, [True] * 5 + [False] * 5)
    decision = verdict(rows, EvalSpec(min_pass_rate={"clean": 0.8}))
    assert "fix: raise train.epochs (or train.max_steps) or train.lr" in decision.reasons[0]
    assert "data.replay_ratio" not in decision.reasons[0]
    assert list(decision.levers) == ["clean"] and "train.epochs" in decision.levers["clean"][0]


def test_levers_are_listed_for_blocking_slices_only() -> None:
    rows = table("clean", [False] * 10, [True] * 10) + table("general", [True] * 10, [False] * 10, probe=True)
    assert list(verdict(rows).levers) == ["general"]


def test_the_reports_show_each_blocking_slice_s_levers() -> None:
    rows = table("general", [True] * 10, [False] * 10, probe=True)
    decision = verdict(rows)
    report = GateReport(
        decision.verdict,
        decision.reasons,
        decision.improvements,
        slice_scores(rows, ["base", "adapter"]),
        rows,
        ["base", "adapter"],
        levers=decision.levers,
    )
    markdown = render_markdown(report)
    assert "## What to change" in markdown and "- general: add a smaller scale to train.strength.scales" in markdown
    assert 'id="levers"' in render_html(report) and "train.replay_kl" in render_html(report)
    assert report.to_dict()["levers"]["general"][2] == "turn on or raise train.replay_kl"
