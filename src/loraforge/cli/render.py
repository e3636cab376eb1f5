"""Rich renderings shared by commands (the demo shows what prepare, train and eval show)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loraforge.errors import GateBlocked


def data_summary(report: dict[str, Any], output: Path) -> Table:
    table = Table(title=f"data: {output / 'data_report.json'}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items()) or "none"
    pct = report["percentiles"]
    pii = report["pii"]
    rows = {
        "rows in": f"{report['rows_in']:,}",
        "rows kept": f"{report['rows_kept']:,} (train {report['split']['train']:,}{_replay(report)}, "
        f"eval {report['split']['eval']:,})",
        "dropped": dropped,
        "leaked (golden duplicates removed)": str(report["leaked"]),
        "duplicates": f"exact {report['duplicates']['exact']}, near {report['duplicates']['near']}",
        "PII": f"{pii['mode']}: {', '.join(f'{k} {v}' for k, v in pii['counts'].items()) or 'none found'}",
        "PII rows by recognizer": ", ".join(f"{k} {v}" for k, v in pii.get("rows_by_recognizer", {}).items()) or "none",
        "PII-dependent rows dropped": str(pii.get("dropped_dependent", 0)),
        "token length p50/p95/max": f"{pct['p50']} / {pct['p95']} / {pct['max']}",
        "max_seq_len": f"{report['max_seq_len']} ({report['max_seq_len_source']})",
        "truncated": str(report["truncated"]),
        "packing efficiency": "off" if report["packing_efficiency"] is None else f"{report['packing_efficiency']:.1%}",
        "train sha256": report["train_sha256"][:16],
        "golden sha256": (report["golden_sha256"] or "none")[:16],
        "template sha256": report["template_sha256"][:16],
        "cache": "hit (nothing recomputed)" if report.get("cached") else "miss (prepared and stored)",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def train_table(run: Any) -> Table:
    """A TrainRun (loraforge.pipeline.train_run) as a two-column table."""
    result, config = run.result, run.config
    table = Table(title=f"trained: {config.output}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = {
        "stopped": result.stop_reason,
        "steps": f"{result.final_step} of {result.total_steps}"
        + (f" (resumed at {result.resumed_from})" if result.resumed_from else ""),
        "best eval loss": f"{result.best_eval_loss:.4f} at step {result.best_step}",
        "first / last eval loss": f"{result.eval_losses[0][1]:.4f} / {result.eval_losses[-1][1]:.4f}",
        "tokens/s": f"{result.tokens_per_s:,.0f}",
        "adapter": str(run.adapter_dir),
        "metrics": f"{result.metrics_path}, {result.plot_path}",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def gate_table(report: Any) -> Table:
    """A GateReport's pass rate per slice for every role (base, adapter, against)."""
    from loraforge.evaluate.report import judge_cell  # loraforge.evaluate imports torch: --help must not

    judged = any(score.judge is not None for score in report.slices.values())
    table = Table(title="eval gate: pass rate per slice")
    for column in ["slice", "n", *report.roles, *(["judge agreement"] if judged else [])]:
        table.add_column(column, justify="left" if column in ("slice", "judge agreement") else "right")
    for name, score in report.slices.items():
        cells = [
            name + (" (probe)" if score.probe else ""),
            str(score.n),
            *(f"{score.rate(r):.1%}" if r in score.passes else "-" for r in report.roles),
        ]
        table.add_row(*cells, *([judge_cell(score)] if judged else []))
    return table


def strength_line(strength: dict[str, Any] | None) -> str | None:
    """train.strength's choice in words: the scale kept and what each tried scale lost."""
    if not strength:
        return None
    tried = ", ".join(f"x{t['scale']:g} lost {t['lost']}" for t in strength["tried"]) or "nothing to lose"
    return (
        f"adapter strength x{strength['scale']:g} (selection probes the base knows: {strength['probes']}; "
        f"{tried}; {strength['seconds']:.0f} s)"
    )


def report_gate(console: Console, report: Any, eval_dir: Path) -> None:
    """Print the gate's table, notes and improvements; raise GateBlocked (exit 3) when it blocks."""
    strength = strength_line(report.info.get("strength"))
    if strength:
        console.print(escape(strength))
    console.print(gate_table(report))
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    for line in report.improvements:
        console.print(f"  {escape(line)}")
    for line in report.prompting:
        console.print(f"  vs prompting: {escape(line)}")
    for line in report.advisory:
        console.print(f"[yellow]advisory[/]: {escape(line)}")
    if report.info.get("base_cache") == "hit":
        console.print("[dim]base answers reused from an earlier gate on the same base and cases (eval.cache_base)[/]")
    console.print(f"reports: {eval_dir}/report.{{json,md,html}}")
    if not report.passed:
        raise GateBlocked("eval gate blocked the adapter:\n" + "\n".join(f"  - {r}" for r in report.reasons))
    console.print("[bold green]gate: pass[/]")


def _replay(report: dict[str, Any]) -> str:
    replay = report["split"].get("replay", 0)
    return f" incl. {replay:,} replay" if replay else ""


def signing_line(signature: Path | None, gate_passed: bool | None) -> str:
    """The run's ship.key outcome: signed, or why not; `gate_passed` None: the gate was off (docs/ship-signing.md)."""
    if signature is not None:
        return f"[green]adapter signed[/]: {escape(str(signature))}"
    if gate_passed is None:
        return "adapter not signed: only an adapter that passed the gate is signed (eval.gate is off)"
    if not gate_passed:
        return "adapter not signed: the gate blocked it"
    return "adapter not signed (set ship.key to sign)"
