"""`loraforge baseline`: before any training, how far do the base alone and the base prompted with
training examples get on the golden set? The audit before spend: a task that few-shot prompting
already passes does not need an adapter.

The base answers the gate's own cases (the golden set and the probes) through the gate's cache, and
few-shot answers the golden cases exactly as the gate's `few_shot` role will (evaluate.few_shot),
so a later `loraforge train` finds both halves cached. Reports: OUTPUT/baseline/report.{json,md,html}.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraforge.config import EvalSpec
from loraforge.data.types import Record
from loraforge.errors import EvalError
from loraforge.evaluate.few_shot import FEW_SHOT_ROLE, few_shot_cases
from loraforge.evaluate.report import OUTPUT_CHARS, write_report_files
from loraforge.evaluate.runner import base_scored, gate_cases
from loraforge.evaluate.scoring import RowResult, SliceScore, prompt_text, score_role, slice_scores
from loraforge.models import LoadedBase

ROLES = ("base", FEW_SHOT_ROLE)
# a slice prompting passes 9 times in 10 leaves a fine-tune at most a tenth to win: try the prompt first
PROMPT_IS_ENOUGH = 0.9
EXAMPLES_PER_SLICE = 3


@dataclass
class BaselineReport:
    slices: dict[str, SliceScore]
    rows: list[RowResult]
    readings: list[str]  # per golden slice: is prompting enough
    info: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ROLES

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": list(self.roles),
            "readings": list(self.readings),
            "slices": {name: score.to_dict() for name, score in self.slices.items()},
            "rows": [row.to_dict() for row in self.rows],
            **self.info,
        }


def reading(score: SliceScore, floor: float | None) -> str:
    """What the slice's base and few-shot pass rates say about fine-tuning it."""
    shots, base = score.rate(FEW_SHOT_ROLE), score.rate("base")
    figures = f"few-shot {shots:.1%} ({score.passes[FEW_SHOT_ROLE]}/{score.n}), base {base:.1%}"
    if floor is not None and shots >= floor:
        verdict = f"prompting already meets eval.min_pass_rate {floor:.1%}: try the prompt before a fine-tune"
    elif shots >= PROMPT_IS_ENOUGH:
        verdict = f"prompting passes {shots:.1%}: a fine-tune can add at most {1 - shots:.1%}; try the prompt first"
    else:
        verdict = f"prompting leaves {1 - shots:.1%} of the rows for a fine-tune to win"
    return f"slice '{score.name}': {verdict}; {figures}"


def run_baseline(
    base: LoadedBase,
    golden: Sequence[Record],
    examples: Sequence[Record],
    spec: EvalSpec,
    out_dir: Path,
    *,
    chat_template: str,
    seed: int = 0,
    info: dict[str, Any] | None = None,
) -> BaselineReport:
    """Score the base and few-shot on the golden slices and write the reports."""
    cases = gate_cases(list(golden), spec)
    target = [c for c in cases if not c.probe]
    if not target:
        raise EvalError("loraforge baseline needs a golden set: set data.golden to a jsonl of reference answers")
    if FEW_SHOT_ROLE not in spec.baselines:
        raise EvalError("eval.baselines has no few_shot: add it (eval.baselines: [few_shot]) to compare with prompting")
    context = getattr(base.model.config, "max_position_embeddings", None)
    shots = few_shot_cases(target, examples, spec.few_shot, base.tokenizer, chat_template, seed, context)
    if not any(shots.examples):
        raise EvalError(
            "data.train: no row fits as a few-shot example (a user turn, then the assistant's answer) within "
            "eval.few_shot.max_prompt_tokens; raise it, or add chat rows"
        )
    model = base.model
    was_training = model.training
    model.eval()
    rows = [RowResult(case, prompt=prompt_text(base.tokenizer, case, chat_template)) for case in target]
    seconds: dict[str, float] = {}
    caches: dict[str, str] = {}
    try:
        started = time.perf_counter()
        answers, nll, caches["base"] = base_scored(base, model, cases, spec, chat_template, "baseline: base",
                                                   spec.cache_base)  # fmt: skip
        score_role("base", rows, answers[: len(target)], nll[: len(target)])
        seconds["base"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        answers, nll, caches[FEW_SHOT_ROLE] = base_scored(
            base, model, shots.cases, spec, chat_template, "baseline: few-shot", spec.cache_base
        )
        score_role(FEW_SHOT_ROLE, rows, answers, nll)
        for row, case in zip(rows, shots.cases, strict=True):
            row.prompts[FEW_SHOT_ROLE] = prompt_text(base.tokenizer, case, chat_template)
        seconds[FEW_SHOT_ROLE] = round(time.perf_counter() - started, 2)
    finally:
        model.train(was_training)
    slices = slice_scores(rows, ROLES)
    readings = [reading(score, spec.min_pass_rate.get(name)) for name, score in slices.items()]
    report_info = {
        "base": {"spec": base.spec, "fingerprint": base.fingerprint},
        "seconds": seconds,
        "cache": caches,
        "few_shot": shots.summary(spec.few_shot),
        **(info or {}),
    }
    report = BaselineReport(slices, rows, readings, report_info)
    write_baseline_reports(report, out_dir)
    return report


def _cut(text: str) -> str:
    return " ".join((text if len(text) <= OUTPUT_CHARS else text[:OUTPUT_CHARS] + "...").split())


def _examples(report: BaselineReport, name: str) -> list[RowResult]:
    members = [r for r in report.rows if r.case.slice == name]
    members.sort(key=lambda r: bool(r.passed.get(FEW_SHOT_ROLE)))
    return members[:EXAMPLES_PER_SLICE]


def render_markdown(report: BaselineReport) -> str:
    lines = ["# Prompting baseline", "", *(f"- {r}" for r in report.readings), ""]
    shots = report.info.get("few_shot") or {}
    lines += [
        f"Few-shot: {shots.get('k')} examples ({shots.get('select')}), {shots.get('mean_examples')} held on "
        f"average within {shots.get('max_prompt_tokens')} prompt tokens.",
        "",
        "| slice | n | base | few-shot | loss base | loss few-shot |",
        "|---|---|---|---|---|---|",
    ]
    for name, score in report.slices.items():
        rates = [f"{score.rate(r):.1%}" for r in report.roles]
        losses = [f"{score.loss[r]:.3f}" if r in score.loss else "-" for r in report.roles]
        lines.append(f"| {name} | {score.n} | " + " | ".join(rates + losses) + " |")
    lines += ["", "## Examples", ""]
    for name in report.slices:
        lines += [f"### {name}", ""]
        for row in _examples(report, name):
            lines += [f"**{row.case.id}**: {_cut(row.case.question)}", f"- reference: `{_cut(row.case.reference)}`"]
            for role in report.roles:
                mark = "pass" if row.passed.get(role) else "FAIL"
                lines.append(f"- {role} [{mark}]: `{_cut(row.outputs.get(role, ''))}`")
            lines.append("")
    return "\n".join(lines) + "\n"


def render_html(report: BaselineReport) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("slice", "n", "base", "few-shot", "loss base", "loss few-shot"))
    body = []
    for name, score in report.slices.items():
        cells = [html.escape(name), str(score.n), *(f"{score.rate(r):.1%}" for r in report.roles)]
        cells += [f"{score.loss[r]:.3f}" if r in score.loss else "-" for r in report.roles]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    readings = "".join(f"<li>{html.escape(r)}</li>" for r in report.readings)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>loraforge prompting baseline</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:.3rem .6rem}</style></head><body><h1>Prompting baseline</h1>"
        f'<ul id="readings">{readings}</ul><table id="slices"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table></body></html>\n"
    )


def write_baseline_reports(report: BaselineReport, out_dir: Path) -> dict[str, Path]:
    return write_report_files(out_dir, report.to_dict(), render_markdown(report), render_html(report))
