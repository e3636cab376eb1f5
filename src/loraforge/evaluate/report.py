"""The gate's reports: report.json (the contract), report.md and a self-contained report.html
(inline CSS, no scripts, no external assets: it opens from a mail attachment or a CI artifact)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraforge.files import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from loraforge.evaluate.gate import GateReport
    from loraforge.evaluate.scoring import RowResult, SliceScore

EXAMPLES_PER_SLICE = 3  # rows shown side by side per slice; failing ones first
OUTPUT_CHARS = 300  # an output is cut to this many characters in md/html (report.json keeps it whole)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right}.pass{color:#176317}.block{color:#a11}
.verdict{font-size:1.6rem;font-weight:bold}pre{white-space:pre-wrap;margin:0;font-size:.85rem}
.down{color:#a11}.up{color:#176317}
"""


def _cut(text: str) -> str:
    return text if len(text) <= OUTPUT_CHARS else text[:OUTPUT_CHARS] + "..."


def _rate(score: SliceScore, role: str) -> str:
    return f"{score.rate(role):.1%}" if role in score.passes else "-"  # few-shot answers golden rows only


def _delta_value(score: SliceScore, role: str) -> float | None:
    if role not in score.passes or "adapter" not in score.passes:
        return None
    return score.rate("adapter") - score.rate(role)


def _delta(score: SliceScore, role: str) -> str:
    value = _delta_value(score, role)
    return "-" if value is None else f"{value:+.1%}"


def _examples(rows: list[RowResult], slice_name: str) -> list[RowResult]:
    members = [r for r in rows if r.case.slice == slice_name]
    members.sort(key=lambda r: bool(r.passed.get("adapter")))
    return members[:EXAMPLES_PER_SLICE]


def judge_cell(score: SliceScore) -> str:
    """A judge slice's agreement with people and whether it decides: "pass/fail kappa 0.72 (acc 88%, n 40); decides"."""
    judge = score.judge
    if judge is None:
        return "-"
    figures = [
        f"{kind} kappa {a['kappa']:.2f} (acc {a['accuracy']:.0%}, n {a['n']})" for kind, a in judge["agreement"].items()
    ]
    errors = sum(judge["errors"].values())
    parts = ["; ".join(figures) or "uncalibrated"]
    if errors:
        parts.append(f"unreadable judge replies on {errors} answer{'' if errors == 1 else 's'}")
    parts.append("decides" if judge["decides"] else f"advisory: {judge['why']}")
    return "; ".join(parts)


def _has_judge(report: GateReport) -> bool:
    return any(s.judge is not None for s in report.slices.values())


def render_markdown(report: GateReport) -> str:
    roles = report.roles
    lines = [f"# Eval gate: {report.verdict.upper()}", ""]
    lines += [f"> {note}" for note in report.notes] + ([""] if report.notes else [])
    if report.reasons:
        lines += ["## Why it blocks", ""] + [f"- {r}" for r in report.reasons] + [""]
    if report.advisory:
        lines += ["## Advisory (a judge that may not decide)", ""] + [f"- {a}" for a in report.advisory] + [""]
    if report.levers:
        lines += ["## What to change", ""]
        lines += [f"- {name}: " + "; or ".join(keys) for name, keys in report.levers.items()] + [""]
    if report.improvements:
        lines += ["## Target slices", ""] + [f"- {i}" for i in report.improvements] + [""]
    if report.prompting:
        lines += ["## Fine-tuning vs prompting", ""] + [f"- {p}" for p in report.prompting] + [""]
    others = [r for r in roles if r != "adapter"]
    head = ["slice", "n"] + roles + [f"delta vs {r}" for r in others] + [f"loss {r}" for r in roles]
    head += ["judge agreement"] if _has_judge(report) else []
    lines += ["## Slices", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, score in report.slices.items():
        cells = [name + (" (probe)" if score.probe else ""), str(score.n)]
        cells += [_rate(score, r) for r in roles] + [_delta(score, r) for r in others]
        cells += [f"{score.loss[r]:.3f}" if r in score.loss else "-" for r in roles]
        cells += [judge_cell(score)] if _has_judge(report) else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Examples", ""]
    for name in report.slices:
        lines += [f"### {name}", ""]
        for row in _examples(report.rows, name):
            lines.append(f"**{row.case.id}**: {' '.join(_cut(row.case.question).split())}")
            lines.append(f"- reference: `{' '.join(_cut(row.case.reference).split())}`")
            for role in (r for r in roles if r in row.outputs):
                mark = "pass" if row.passed.get(role) else "FAIL"
                lines.append(f"- {role} [{mark}]: `{' '.join(_cut(row.outputs.get(role, '')).split())}`")
            lines.append("")
    return "\n".join(lines) + "\n"


def _slice_table(report: GateReport) -> str:
    roles = report.roles
    others = [r for r in roles if r != "adapter"]
    head = ["slice", "n", *roles, *(f"delta vs {r}" for r in others), *(f"loss {r}" for r in roles)]
    head += ["judge agreement"] if _has_judge(report) else []
    out = ['<table id="slices"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>"]
    out.append("<tbody>")
    for name, score in report.slices.items():
        cells = [f"<td>{html.escape(name)}{' <small>(probe)</small>' if score.probe else ''}</td>"]
        cells.append(f'<td class="num">{score.n}</td>')
        cells += [f'<td class="num">{_rate(score, r)}</td>' for r in roles]
        for r in others:
            value = _delta_value(score, r) or 0.0
            cls = "down" if value < 0 else "up" if value > 0 else ""
            cells.append(f'<td class="num {cls}">{_delta(score, r)}</td>')
        cells += [f'<td class="num">{score.loss[r]:.3f}</td>' if r in score.loss else "<td>-</td>" for r in roles]
        cells += [f'<td class="judge">{html.escape(judge_cell(score))}</td>'] if _has_judge(report) else []
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _examples_html(report: GateReport) -> str:
    out = []
    head = "<tr><th>row</th><th>reference</th>" + "".join(f"<th>{r}</th>" for r in report.roles) + "</tr>"
    for name in report.slices:
        out.append(f"<h3>{html.escape(name)}</h3><table><thead>{head}</thead><tbody>")
        for row in _examples(report.rows, name):
            cells = [
                f"<td><b>{html.escape(row.case.id)}</b><br><pre>{html.escape(_cut(row.case.question))}</pre></td>",
                f"<td><pre>{html.escape(_cut(row.case.reference))}</pre></td>",
            ]
            for role in report.roles:
                if role not in row.outputs:
                    cells.append("<td>-</td>")
                    continue
                ok = row.passed.get(role)
                mark = f'<span class="{"pass" if ok else "block"}">{"pass" if ok else "FAIL"}</span>'
                cells.append(f"<td>{mark}<pre>{html.escape(_cut(row.outputs.get(role, '')))}</pre></td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
    return "\n".join(out)


def render_html(report: GateReport) -> str:
    verdict = html.escape(report.verdict)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>loraforge eval gate: ' + verdict + "</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1>Eval gate</h1><p class="verdict {verdict}" id="verdict">{verdict.upper()}</p>',
    ]
    parts += [f"<p><b>note:</b> {html.escape(n)}</p>" for n in report.notes]
    if report.reasons:
        items = "".join(f"<li>{html.escape(r)}</li>" for r in report.reasons)
        parts.append(f'<h2>Why it blocks</h2><ul id="reasons">{items}</ul>')
    if report.advisory:
        items = "".join(f"<li>{html.escape(a)}</li>" for a in report.advisory)
        parts.append(f'<h2>Advisory (a judge that may not decide)</h2><ul id="advisory">{items}</ul>')
    if report.levers:
        items = "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape('; or '.join(keys))}</li>"
            for name, keys in report.levers.items()
        )
        parts.append(f'<h2>What to change</h2><ul id="levers">{items}</ul>')
    if report.improvements:
        items = "".join(f"<li>{html.escape(i)}</li>" for i in report.improvements)
        parts.append(f"<h2>Target slices</h2><ul>{items}</ul>")
    if report.prompting:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in report.prompting)
        parts.append(f'<h2>Fine-tuning vs prompting</h2><ul id="prompting">{items}</ul>')
    parts += ["<h2>Slices</h2>", _slice_table(report), "<h2>Examples</h2>", _examples_html(report)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report_files(out_dir: Path, data: dict[str, Any], markdown: str, html_text: str) -> dict[str, Path]:
    """report.json, report.md and report.html into out_dir, each written atomically."""
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "html": out_dir / "report.html"}
    write_json_atomic(paths["json"], data)
    write_text_atomic(paths["md"], markdown)
    write_text_atomic(paths["html"], html_text)
    return paths


def write_reports(report: GateReport, out_dir: Path) -> dict[str, Path]:
    """Write the gate's report.json, report.md and report.html into out_dir."""
    return write_report_files(out_dir, report.to_dict(), render_markdown(report), render_html(report))
