"""How far the judge agrees with people: accuracy and Cohen's kappa on a labelled set.

A labels file is jsonl, one answer a row: {"prompt", "answer", "rubric", "label"} and optionally
"scale" ("pass/fail", the default, or "1-5"), "reference" and "id"; a "pairwise" row adds
"answer_b" and labels which answer is better ("A", "B" or "tie"). The judge grades every row with
the gate's own prompt (pairwise: in both orders, a winner only when both agree, as in the gate);
a reply it cannot read counts as a disagreement (its own category, which no person used). Per
scale: accuracy = share of rows where judge and label agree; kappa = (p_o - p_e) / (1 - p_e),
p_e the agreement two raters with these label frequencies reach by chance. The result is stored
where the gate reads it (eval.judge.calibration, else LORAFORGE_HOME/judge-calibration/), keyed
by endpoint and model.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraforge.config import JudgeSpec
from loraforge.errors import EvalError
from loraforge.evaluate.checks import JUDGE_SCALES
from loraforge.evaluate.judge import Judge, Judgement, JudgeRequest, pairwise_request, single_request
from loraforge.files import loraforge_home, sha256_file, write_json_atomic

UNREAD = "unreadable"  # the judge's label for a reply read_reply could not read
SCALES = (*JUDGE_SCALES, "pairwise")


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (unweighted)."""
    if len(first) != len(second) or not first:
        raise ValueError("kappa needs two equally long, non-empty label lists")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    counts_a, counts_b = Counter(first), Counter(second)
    chance = sum(counts_a[k] * counts_b[k] for k in counts_a) / (n * n)
    if chance == 1:  # both raters gave one and the same label throughout: nothing to tell apart
        raise ValueError("kappa is undefined when both raters use one label only")
    return (observed - chance) / (1 - chance)


@dataclass(frozen=True)
class LabelRow:
    id: str
    prompt: str
    answer: str
    rubric: str
    scale: str
    label: str
    reference: str = ""
    answer_b: str = ""  # pairwise rows: the answer compared with `answer`


def _row_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return ["not a JSON object"]
    problems = [f"'{k}' must be a non-empty string" for k in ("prompt", "rubric") if not _text(row.get(k))]
    if not isinstance(row.get("answer"), str):
        problems.append("'answer' must be a string (the answer a person labelled)")
    scale = row.get("scale", "pass/fail")
    if scale == "pairwise" and not isinstance(row.get("answer_b"), str):
        problems.append("a pairwise row needs 'answer_b', the answer compared with 'answer'")
    if scale not in SCALES:
        problems.append(f"'scale' is {scale!r}; use one of {', '.join(repr(s) for s in SCALES)}")
    elif _label(scale, row.get("label")) is None:
        allowed = {"pass/fail": '"pass" or "fail"', "1-5": "a whole number 1 to 5"}.get(scale, '"A", "B" or "tie"')
        problems.append(f"'label' is {row.get('label')!r}; on the {scale!r} scale use {allowed}")
    return problems


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _label(scale: str, value: Any) -> str | None:
    if scale == "pairwise":
        text = value.strip() if isinstance(value, str) else ""
        return {"a": "A", "b": "B", "tie": "tie"}.get(text.lower())
    if scale == "pass/fail":
        text = str(value).strip().lower() if isinstance(value, str | bool) else ""
        return {"pass": "pass", "fail": "fail", "true": "pass", "false": "fail"}.get(text)
    if type(value) is int and 1 <= value <= 5:
        return str(value)
    return str(value) if isinstance(value, str) and value.strip() in {"1", "2", "3", "4", "5"} else None


def read_labels(path: Path) -> list[LabelRow]:
    """The labelled rows; every problem (bad JSON, missing key, label off its scale) raised at once."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalError(
            f"{path}: cannot read the labels file ({exc.strerror}); pass a jsonl of labelled answers"
        ) from exc
    rows, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path} line {number}: not JSON ({exc.msg})")
            continue
        found = _row_problems(raw)
        problems += [f"{path} line {number}: {p}" for p in found]
        if not found:
            scale = raw.get("scale", "pass/fail")
            rows.append(LabelRow(
                str(raw.get("id") or f"{path.stem}:{number}"), raw["prompt"], raw["answer"], raw["rubric"], scale,
                str(_label(scale, raw["label"])), str(raw.get("reference") or ""), str(raw.get("answer_b") or ""),
            ))  # fmt: skip
    problems += _spread_problems(path, rows)
    if problems:
        shown = "\n  - ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise EvalError(f"labels: {len(problems)} problem(s):\n  - {shown}{more}")
    return rows


def _spread_problems(path: Path, rows: Sequence[LabelRow]) -> list[str]:
    if not rows:
        return [f"{path}: no labelled rows; add rows of prompt, answer, rubric and label"]
    problems = []
    for scale in sorted({r.scale for r in rows}):
        labels = {r.label for r in rows if r.scale == scale}
        if len(labels) < 2:
            problems.append(
                f"{path}: every {scale!r} row is labelled {labels.pop()!r}; kappa needs answers a person "
                "labelled differently: add some"
            )
    return problems


@dataclass(frozen=True)
class Agreement:
    n: int
    accuracy: float
    kappa: float
    unreadable: int  # replies the judge gave that read_reply could not read

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "accuracy": self.accuracy, "kappa": self.kappa, "unreadable": self.unreadable}


@dataclass
class Calibration:
    judge: dict[str, Any]  # Judge.identity()
    labels: dict[str, Any]  # path and sha256 of the labels file
    scales: dict[str, Agreement]
    rows: list[dict[str, Any]] = field(default_factory=list)  # per row: id, scale, human, judge, reply, cached

    def to_dict(self) -> dict[str, Any]:
        scales = {name: a.to_dict() for name, a in self.scales.items()}
        return {"judge": self.judge, "labels": self.labels, "scales": scales, "rows": self.rows}


def agreement(human: Sequence[str], judged: Sequence[str]) -> Agreement:
    n = len(human)
    agree = sum(h == j for h, j in zip(human, judged, strict=True))
    return Agreement(n, agree / n, cohen_kappa(human, judged), sum(j == UNREAD for j in judged))


def _requests(row: LabelRow) -> list[JudgeRequest]:
    if row.scale == "pairwise":
        return [
            pairwise_request(row.rubric, row.prompt, row.answer, row.answer_b, row.reference),
            pairwise_request(row.rubric, row.prompt, row.answer_b, row.answer, row.reference),
        ]
    return [single_request(row.scale, row.rubric, row.prompt, row.answer, row.reference)]  # type: ignore[arg-type]


def _judged(row: LabelRow, judgements: Sequence[Judgement]) -> tuple[str, str]:
    """The judge's label for a row, and why it is unreadable; pairwise: "A" or "B" only when both orders agree."""
    readings = [j.reading for j in judgements]
    errors = [r.error for r in readings if r.label is None]
    if errors:
        return UNREAD, errors[0]
    if row.scale != "pairwise":
        return str(readings[0].label), ""
    first, second = readings[0].label, readings[1].label
    return {("A", "B"): "A", ("B", "A"): "B"}.get((str(first), str(second)), "tie"), ""


def calibrate(rows: Sequence[LabelRow], judge: Judge) -> Calibration:
    """Ask the judge about every labelled row (cached like the gate's) and measure agreement per scale."""
    asked = [_requests(r) for r in rows]
    answered = iter(judge.ask_all([request for requests in asked for request in requests]))
    table: list[dict[str, Any]] = []
    for row, requests in zip(rows, asked, strict=True):
        judgements = [next(answered) for _ in requests]
        label, error = _judged(row, judgements)
        table.append({
            "id": row.id, "scale": row.scale, "human": row.label, "judge": label, "error": error,
            "replies": [j.reply for j in judgements], "cached": [j.cached for j in judgements],
        })  # fmt: skip
    scales = {}
    for scale in dict.fromkeys(r.scale for r in rows):
        mine = [t for t in table if t["scale"] == scale]
        scales[scale] = agreement([t["human"] for t in mine], [t["judge"] for t in mine])
    return Calibration(judge.identity(), {}, scales, table)


def calibration_path(spec: JudgeSpec) -> Path:
    if spec.calibration is not None:
        return spec.calibration
    key = hashlib.sha256(f"{(spec.base_url or '').rstrip('/')}|{spec.model}".encode()).hexdigest()[:16]
    return loraforge_home() / "judge-calibration" / f"{key}.json"


def calibrate_judge(labels_path: Path, spec: JudgeSpec) -> tuple[Calibration, Path, Judge]:
    """`loraforge eval calibrate-judge` as a call: read the labels, ask the judge, store the result
    where the gate finds it; the calibration, where it went, and the judge (its request counts)."""
    rows = read_labels(labels_path)
    judge = Judge(spec)
    result = calibrate(rows, judge)
    result.labels = {"path": str(labels_path), "sha256": sha256_file(labels_path)}
    path = calibration_path(spec)
    write_json_atomic(path, result.to_dict())
    return result, path, judge


def load_calibration(spec: JudgeSpec, identity: dict[str, Any]) -> tuple[dict[str, Agreement], str]:
    """The stored agreement per scale for this judge, or {} and why there is none."""
    path = calibration_path(spec)
    how = "run `loraforge eval calibrate-judge LABELS.jsonl --config CONFIG`"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"the judge {identity['model']} is not calibrated (no {path}); {how}"
    except (OSError, ValueError) as exc:
        return {}, f"{path}: unreadable calibration ({exc}); {how} again"
    if not isinstance(stored, dict) or stored.get("judge") != identity:
        was = stored.get("judge") if isinstance(stored, dict) else None
        return {}, f"{path} calibrated another judge ({was}), not {identity}; {how}"
    try:
        scales = {name: Agreement(int(a["n"]), float(a["accuracy"]), float(a["kappa"]), int(a["unreadable"]))
                  for name, a in stored["scales"].items()}  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return {}, f"{path}: unreadable calibration ({exc!r}); {how} again"
    return scales, ""
