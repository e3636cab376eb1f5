"""Judge checks on the gate's rows, once every role has answered, and each judge slice's standing.

single    the judge grades each role's answer alone; a row passes on PASS, or a score >= pass_at
pairwise  the judge compares a role's answer with the base's twice, the answers swapped the second
          time, so a judge that prefers whichever answer comes first cancels itself out: a role
          wins a row only when it wins in both orders. The adapter (and an `against` adapter)
          passes the row when it beats the base; the base passes when it beats the adapter.
          Answers that are the same text tie without asking.

A reply the judge's reader cannot read fails the row as an error, named in the row's failures and
counted per slice in the report, never a silent pass. A slice whose rows ask a judge decides the
verdict only when the judge's calibrated kappa on each scale the slice uses reaches
eval.judge.min_agreement; otherwise it is reported as advisory (evaluate.gate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from loraforge.evaluate.calibration import Agreement, calibration_path, load_calibration
from loraforge.evaluate.checks import DEFAULT_PASS_AT, CheckSpec, is_judge, normalise_ws
from loraforge.evaluate.judge import Judge, Judgement, JudgeRequest, Kind, pairwise_request, single_request
from loraforge.evaluate.scoring import Case, RowResult, SliceScore, slice_scores

BASE = "base"


def judge_kind(check: CheckSpec) -> Kind:
    return "pairwise" if check.get("mode") == "pairwise" else check.get("scale", "pass/fail")  # type: ignore[no-any-return]


def request_text(case: Case) -> str:
    """The conversation the answer replies to, as the judge reads it."""
    turns = list(case.prompt)
    if len(turns) == 1:
        return str(turns[0]["content"])
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


def uses_judge(cases: Sequence[Case]) -> bool:
    return any(is_judge(c) for case in cases for c in case.checks)


Slot = tuple[int, int, str, int]  # row index, check index, role, order (0: role's answer first)


def _plan(rows: Sequence[RowResult], roles: Sequence[str]) -> list[tuple[Slot, JudgeRequest]]:
    plan = []
    for i, row in enumerate(rows):
        case = row.case
        for c, check in enumerate(case.checks):
            if not is_judge(check):
                continue
            rubric, text, kind = check["rubric"], request_text(case), judge_kind(check)
            for role in (r for r in roles if r in row.outputs):  # few-shot answers golden rows only
                answer = row.outputs[role]
                if kind != "pairwise":
                    plan.append(((i, c, role, 0), single_request(kind, rubric, text, answer, case.reference)))
                elif role != BASE and normalise_ws(answer) != normalise_ws(row.outputs[BASE]):
                    base = row.outputs[BASE]
                    plan.append(((i, c, role, 0), pairwise_request(rubric, text, answer, base, case.reference)))
                    plan.append(((i, c, role, 1), pairwise_request(rubric, text, base, answer, case.reference)))
    return plan


@dataclass(frozen=True)
class JudgeOutcome:
    passed: bool
    detail: str  # why it failed, empty when it passed
    error: bool  # the judge's reply could not be read
    record: dict[str, Any]  # what report.json keeps for this check and role


def _single(check: CheckSpec, c: int, judgement: Judgement) -> JudgeOutcome:
    reading = judgement.reading
    record = {"check": c, "kind": judge_kind(check), "label": reading.label, "reply": judgement.reply,
              "cached": judgement.cached}  # fmt: skip
    if reading.label is None:
        return JudgeOutcome(False, f"judge error: {reading.error}", True, record)
    if check.get("scale") == "1-5":
        pass_at = int(check.get("pass_at", DEFAULT_PASS_AT))
        passed = int(reading.label) >= pass_at
        return JudgeOutcome(
            passed, "" if passed else f"judge scored {reading.label}, under pass_at {pass_at}", False, record
        )
    passed = reading.label == "pass"
    return JudgeOutcome(passed, "" if passed else "judge verdict FAIL", False, record)


def _winner(first: Judgement | None, second: Judgement | None) -> tuple[str, str]:
    """ "role", "base", "tie" or "error" for a role compared with the base in both orders, and why."""
    if first is None or second is None:
        return "tie", "the same answer as the base"
    a, b = first.reading, second.reading
    if a.label is None or b.label is None:
        return "error", f"judge error: {a.error or b.error}"
    if (a.label, b.label) == ("A", "B"):
        return "role", ""
    if (a.label, b.label) == ("B", "A"):
        return "base", "lost to the base in both orders"
    if a.label == b.label and a.label != "tie":
        return "tie", f"the judge picked position {a.label} both times (position bias): no winner"
    return "tie", f"no consistent winner (judge said {a.label}, then {b.label} with the answers swapped)"


def _pairwise(c: int, role: str, compared: str, found: dict[Slot, Judgement], i: int) -> JudgeOutcome:
    """`role`'s mark on a pairwise check: `compared` is the non-base role whose answer met the base's."""
    first, second = found.get((i, c, compared, 0)), found.get((i, c, compared, 1))
    winner, why = _winner(first, second)
    record = {"check": c, "kind": "pairwise", "versus": compared if role == BASE else BASE, "winner": winner,
              "replies": [j.reply for j in (first, second) if j is not None],
              "cached": [j.cached for j in (first, second) if j is not None]}  # fmt: skip
    if winner == "error":
        return JudgeOutcome(False, why, True, record)
    wins = winner == ("base" if role == BASE else "role")
    if role == BASE and winner == "role":
        why = f"lost to the {compared} in both orders"
    return JudgeOutcome(wins, "" if wins else f"pairwise: {why}", False, record)


def judge_rows(rows: Sequence[RowResult], roles: Sequence[str], judge: Judge) -> None:
    """Ask the judge about every judge check of every row and fold the outcomes into the rows'
    passed and failures (a row passes when every check does) and `judged`."""
    plan = _plan(rows, roles)
    found = dict(zip((slot for slot, _ in plan), judge.ask_all([r for _, r in plan]), strict=True))
    for i, row in enumerate(rows):
        for c, check in enumerate(row.case.checks):
            if not is_judge(check):
                continue
            for role in (r for r in roles if r in row.outputs):
                if judge_kind(check) == "pairwise":
                    # the base's mark is whether it beats the candidate adapter
                    outcome = _pairwise(c, role, "adapter" if role == BASE else role, found, i)
                else:
                    outcome = _single(check, c, found[(i, c, role, 0)])
                row.judged.setdefault(role, []).append({**outcome.record, "error": outcome.error})
                row.passed[role] = row.passed.get(role, True) and outcome.passed
                if not outcome.passed:
                    row.failures.setdefault(role, []).append(f"judge: {outcome.detail}")


def slice_standing(
    rows: Sequence[RowResult],
    roles: Sequence[str],
    scales: dict[str, Agreement],
    uncalibrated: str,
    min_agreement: float,
) -> dict[str, Any] | None:
    """A slice's judge figures for the report, and whether it may decide the verdict; None without judge checks."""
    kinds = list(dict.fromkeys(judge_kind(c) for r in rows for c in r.case.checks if is_judge(c)))
    if not kinds:
        return None
    errors = {role: sum(1 for r in rows if any(j["error"] for j in r.judged.get(role, []))) for role in roles}
    agreement = {kind: scales[kind].to_dict() for kind in kinds if kind in scales}
    missing = [kind for kind in kinds if kind not in scales]
    kappa = min((scales[k].kappa for k in kinds if k in scales), default=None)
    if missing:
        why = uncalibrated or f"the calibration has no {', '.join(repr(k) for k in missing)} rows; add labelled ones"
    elif kappa is not None and kappa < min_agreement:
        why = f"the judge's kappa {kappa:.2f} is below eval.judge.min_agreement {min_agreement:.2f}"
    else:
        why = ""
    return {"kinds": kinds, "errors": errors, "agreement": agreement, "kappa": None if missing else kappa,
            "min_agreement": min_agreement, "decides": not why, "why": why}  # fmt: skip


def judge_gate_rows(
    rows: Sequence[RowResult], roles: Sequence[str], judge: Judge
) -> tuple[dict[str, SliceScore], dict[str, Any], list[str]]:
    """Judge the rows, then the slices rescored with each judge slice's standing, what report.json
    records under "judge", and the notes the report must carry (an uncalibrated judge)."""
    judge_rows(rows, roles, judge)
    rescored = slice_scores(rows, roles)
    scales, uncalibrated = load_calibration(judge.spec, judge.identity())
    for name, score in rescored.items():
        members = [r for r in rows if r.case.slice == name]
        rescored[name] = replace(
            score, judge=slice_standing(members, roles, scales, uncalibrated, judge.spec.min_agreement)
        )
    info = {
        **judge.identity(),
        "asked": judge.asked,
        "from_cache": judge.from_cache,
        "calibration": str(calibration_path(judge.spec)),
        "agreement": {kind: a.to_dict() for kind, a in scales.items()},
    }
    notes = [f"{uncalibrated}: until then its slices are advisory"] if uncalibrated else []
    return rescored, info, notes
