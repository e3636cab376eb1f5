"""The LLM judge without a server: reading replies (fixed strings), Cohen's kappa against a
hand-worked example, judge check arguments, labels files, pairwise winners and the rule that a
judge below eval.judge.min_agreement neither blocks nor passes on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loraforge.cli import main
from loraforge.config import EvalSpec, JudgeSpec, validate_config
from loraforge.errors import ConfigError, EvalError
from loraforge.evaluate.calibration import cohen_kappa, read_labels
from loraforge.evaluate.checks import check_problems, run_checks
from loraforge.evaluate.gate import decide
from loraforge.evaluate.judge import Judge, Judgement, pairwise_request, read_reply, single_request
from loraforge.evaluate.judging import _winner
from loraforge.evaluate.report import render_markdown
from loraforge.evaluate.scoring import Case, RowResult, slice_scores

LABELS = Path(__file__).resolve().parent.parent / "examples" / "judge" / "labels.jsonl"


@pytest.mark.parametrize(
    ("kind", "reply", "label"),
    [
        ("pass/fail", "Verdict: PASS", "pass"),
        ("pass/fail", "**Verdict:** fail.", "fail"),
        ("pass/fail", "The answer names the refund.\nVerdict: PASS", "pass"),
        ("pass/fail", "FAIL", "fail"),
        ("1-5", "Score: 4", "4"),
        ("1-5", "score = 2/5", "2"),
        ("1-5", "  5  ", "5"),
        ("1-5", "Score: 3 out of 5", "3"),
        ("pairwise", "Winner: B", "B"),
        ("pairwise", "winner: tie", "tie"),
        ("pairwise", "Winner: Answer A", "A"),
    ],
)
def test_a_reply_in_the_asked_format_is_read(kind: Any, reply: str, label: str) -> None:
    assert read_reply(kind, reply).label == label


@pytest.mark.parametrize(
    ("kind", "reply", "why"),
    [
        ("1-5", "Score: 7", "off the scale"),
        ("1-5", "Score: 3.5", "off the scale"),
        ("1-5", "Score: 3\nScore: 5", "conflicting"),
        ("1-5", "I would give it a 4 or maybe a 5", "has no 'Score: N' line"),
        ("pass/fail", "", "has no 'Verdict: PASS'"),
        ("pass/fail", "eas=easeaseas", "has no"),
        ("pairwise", "Winner: C", "off the scale"),
    ],
)
def test_a_reply_out_of_format_is_an_error_not_a_guess(kind: Any, reply: str, why: str) -> None:
    reading = read_reply(kind, reply)
    assert reading.label is None and why in reading.error


def test_kappa_matches_the_hand_worked_example() -> None:
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15. p_o = 35/50 = 0.7;
    # A says yes 25/50, B 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    first = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)


def test_kappa_of_a_rater_who_always_says_the_same_is_zero() -> None:
    assert cohen_kappa(["pass", "fail", "pass", "fail"], ["pass"] * 4) == pytest.approx(0.0)


def test_kappa_of_full_disagreement_on_balanced_labels_is_minus_one() -> None:
    assert cohen_kappa(["pass", "fail"] * 3, ["fail", "pass"] * 3) == pytest.approx(-1.0)


def test_kappa_of_two_one_label_raters_is_undefined() -> None:
    with pytest.raises(ValueError, match="one label only"):
        cohen_kappa(["pass"] * 3, ["pass"] * 3)


def test_judge_check_arguments_are_checked() -> None:
    problems = check_problems(
        [
            {"type": "judge"},
            {"type": "judge", "rubric": "r", "scale": "1-10"},
            {"type": "judge", "rubric": "r", "mode": "pairwise", "scale": "1-5"},
            {"type": "judge", "rubric": "r", "scale": "1-5", "pass_at": 6},
        ],
        "ref",
        "golden.jsonl line 3",
    )
    assert len(problems) == 4 and all(p.startswith("golden.jsonl line 3: checks[") for p in problems)
    assert "needs a 'rubric'" in problems[0] and "'scale' is '1-10'" in problems[1]
    assert "remove 'scale'" in problems[2] and "'pass_at'" in problems[3]


def test_a_valid_judge_check_has_no_problems_and_is_not_run_as_a_local_check() -> None:
    checks = [{"type": "judge", "rubric": "polite", "scale": "1-5", "pass_at": 3}, {"type": "contains", "value": "x"}]
    assert check_problems(checks, "ref", "g") == []
    assert [o.type for o in run_checks(checks, "x", "ref")] == ["contains"]


def test_judge_url_without_a_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="eval.judge: .*name the model"):
        validate_config(
            {"data": {"train": "x.jsonl"}, "eval": {"judge": {"base_url": "http://x/v1"}}}, check_files=False
        )


def test_a_judge_without_an_endpoint_names_the_settings() -> None:
    with pytest.raises(EvalError, match="set eval.judge.base_url and eval.judge.model"):
        Judge(JudgeSpec())


def test_a_key_variable_that_is_unset_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAFORGE_NO_SUCH_KEY", raising=False)
    spec = JudgeSpec(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="LORAFORGE_NO_SUCH_KEY")
    with pytest.raises(EvalError, match="LORAFORGE_NO_SUCH_KEY is not set"):
        Judge(spec)


def test_the_prompt_holds_rubric_request_reference_and_answer() -> None:
    request = single_request("1-5", "names the refund", "my desk broke", "we refund you", "a refund of 10 euros")
    system, user = (content for _, content in request.messages)
    assert "Score: N" in system and "Verdict" not in system
    assert (
        user.index("names the refund") < user.index("my desk broke") < user.index("10 euros") < user.index("we refund")
    )


def _judged(reply_first: str, reply_second: str) -> tuple[str, str]:
    request = pairwise_request("r", "q", "one", "two")
    return _winner(Judgement(request, reply_first, False), Judgement(request, reply_second, False))


def test_pairwise_wins_only_when_both_orders_agree() -> None:
    assert _judged("Winner: A", "Winner: B")[0] == "role"  # role's answer first, then second: it won both
    assert _judged("Winner: B", "Winner: A")[0] == "base"


def test_pairwise_picking_the_same_position_twice_is_position_bias_not_a_win() -> None:
    winner, why = _judged("Winner: A", "Winner: A")
    assert winner == "tie" and "position bias" in why


def test_pairwise_with_an_unreadable_reply_is_an_error() -> None:
    winner, why = _judged("Winner: A", "the first one")
    assert winner == "error" and "judge error" in why


def _rows(slice_name: str, base: list[bool], adapter: list[bool], judged: bool) -> list[RowResult]:
    checks = ({"type": "judge", "rubric": "r"},) if judged else ()
    rows = []
    for i, (b, a) in enumerate(zip(base, adapter, strict=True)):
        case = Case(f"{slice_name}-{i}", slice_name, f"g line {i}", ({"role": "user", "content": "q"},), "r", checks, 8)
        row = RowResult(case, outputs={"base": "x", "adapter": "y"}, passed={"base": b, "adapter": a}, n_ref_tokens=1)
        row.nll_sum = {"base": 1.0, "adapter": 1.0}
        row.failures = {"base": [] if b else ["judge: FAIL"], "adapter": [] if a else ["judge: FAIL"]}
        rows.append(row)
    return rows


def _standing(decides: bool) -> dict[str, Any]:
    kappa = 0.8 if decides else 0.1
    why = "" if decides else "the judge's kappa 0.10 is below eval.judge.min_agreement 0.60"
    agreement = {"pass/fail": {"n": 40, "accuracy": 0.9 if decides else 0.5, "kappa": kappa, "unreadable": 0}}
    return {"kinds": ["pass/fail"], "errors": {"base": 0, "adapter": 0}, "agreement": agreement, "kappa": kappa,
            "min_agreement": 0.6, "decides": decides, "why": why}  # fmt: skip


def _decide(rows: list[RowResult], decides: bool) -> Any:
    slices = slice_scores(rows, ["base", "adapter"])
    slices = {
        n: s if n != "judged" else type(s)(**{**s.__dict__, "judge": _standing(decides)}) for n, s in slices.items()
    }
    return slices, decide(slices, rows, EvalSpec(), ["base"])


def test_a_judge_below_min_agreement_cannot_block() -> None:
    rows = _rows("judged", [True] * 10, [False] * 10, judged=True) + _rows("plain", [True] * 5, [True] * 5, False)
    _, decision = _decide(rows, decides=False)
    assert decision.verdict == "pass" and decision.reasons == []
    assert len(decision.advisory) == 1 and "slice 'judged'" in decision.advisory[0]
    assert "below eval.judge.min_agreement" in decision.advisory[0]


def test_a_calibrated_judge_blocks() -> None:
    rows = _rows("judged", [True] * 10, [False] * 10, judged=True) + _rows("plain", [True] * 5, [True] * 5, False)
    _, decision = _decide(rows, decides=True)
    assert decision.verdict == "block" and "slice 'judged'" in decision.reasons[0] and decision.advisory == []


def test_a_judge_below_min_agreement_cannot_pass_on_its_own() -> None:
    slices, decision = _decide(_rows("judged", [False] * 10, [True] * 10, judged=True), decides=False)
    assert decision.verdict == "block" and "no slice can decide" in decision.reasons[0]
    assert "would pass" in decision.advisory[0]


def test_the_report_shows_each_judge_slice_with_its_agreement() -> None:
    from loraforge.evaluate.gate import GateReport

    rows = _rows("judged", [True] * 4, [True] * 4, judged=True) + _rows("plain", [True] * 2, [True] * 2, False)
    slices, decision = _decide(rows, decides=False)
    report = GateReport(decision.verdict, decision.reasons, decision.improvements, slices, rows, ["base", "adapter"],
                        advisory=decision.advisory)  # fmt: skip
    markdown = render_markdown(report)
    judged_line = next(line for line in markdown.splitlines() if line.startswith("| judged"))
    plain_line = next(line for line in markdown.splitlines() if line.startswith("| plain"))
    assert "| judge agreement |" in markdown and "## Advisory" in markdown
    assert (
        "pass/fail kappa 0.10 (acc 50%, n 40); advisory: the judge's kappa 0.10 is below eval.judge.min_agreement"
        in judged_line
        and plain_line.endswith("| - |")
    )


def test_a_judge_gate_s_summary_is_a_valid_manifest_eval_entry() -> None:
    from manifests import valid_manifest

    from loraforge.evaluate.gate import GateReport
    from loraforge.models.manifest import manifest_problems

    rows = _rows("judged", [True] * 4, [False] * 4, judged=True) + _rows("plain", [True] * 2, [True] * 2, False)
    slices, decision = _decide(rows, decides=False)
    report = GateReport(decision.verdict, decision.reasons, decision.improvements, slices, rows, ["base", "adapter"],
                        advisory=decision.advisory)  # fmt: skip
    manifest = {**valid_manifest("sha256:" + "0" * 64), "eval": report.summary()}
    assert manifest_problems(manifest) == []
    assert report.summary()["judge"]["judged"]["decides"] is False and report.summary()["advisory"]


def test_the_bundled_labels_are_valid_and_balanced() -> None:
    rows = read_labels(LABELS)
    pass_fail = [r for r in rows if r.scale == "pass/fail"]
    assert len(pass_fail) >= 40 and {r.label for r in pass_fail} == {"pass", "fail"}
    assert {r.label for r in rows if r.scale == "pairwise"} == {"A", "B", "tie"}
    assert sum(r.label == "pass" for r in pass_fail) == sum(r.label == "fail" for r in pass_fail)


def test_a_bad_labels_file_names_each_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    good = {"prompt": "p", "answer": "a", "rubric": "r", "label": "pass"}
    lines = [
        json.dumps(good),
        "{oops",
        json.dumps({**good, "label": "maybe"}),
        json.dumps({**good, "scale": "1-5", "label": 9}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalError) as caught:
        read_labels(path)
    message = str(caught.value)
    assert (
        "line 2: not JSON" in message and "line 3: 'label' is 'maybe'" in message and "line 4: 'label' is 9" in message
    )


def test_a_pairwise_label_row_needs_answer_b_and_a_winner(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    row = {"prompt": "p", "answer": "a", "rubric": "r", "scale": "pairwise", "label": "first"}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(EvalError) as caught:
        read_labels(path)
    assert "needs 'answer_b'" in str(caught.value) and 'use "A", "B" or "tie"' in str(caught.value)


def test_labels_with_one_label_only_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": "p", "answer": f"a{i}", "rubric": "r", "label": "pass"}) + "\n" for i in range(3))
    )
    with pytest.raises(EvalError, match="every 'pass/fail' row is labelled 'pass'; kappa needs"):
        read_labels(path)


def test_calibrate_judge_with_a_bad_labels_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data: {train: missing.jsonl}\neval: {judge: {base_url: 'http://127.0.0.1:9/v1', model: m}}\n")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("{oops\n")
    assert main(["eval", "calibrate-judge", str(labels), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "labels.jsonl line 1: not JSON" in " ".join(err.split()) and "Traceback" not in err
