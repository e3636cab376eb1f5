"""`loraforge train CONFIG [--set k=v] [--resume]` (also under `accelerate launch -m loraforge train`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from loraforge.cli.common import SET_OPTION, load
from loraforge.cli.render import gate_table, train_table
from loraforge.errors import GateBlocked

console = Console()


def train(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    overrides: list[str] = SET_OPTION,
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in OUTPUT."),
) -> None:
    """Train the adapter, keep the best checkpoint by eval loss in OUTPUT/adapter, then run the eval
    gate on it (eval.gate) and record the verdict in its manifest; exit 3 when the gate blocks."""
    from loraforge.pipeline.run import train_and_gate  # deferred: torch imports cost seconds

    config = load(config_path, overrides)
    outcome = train_and_gate(config, resume=resume)
    if not outcome.train.main_process:
        return  # under accelerate launch the main process reports
    console.print(train_table(outcome.train))
    report = outcome.gate
    if report is None:
        console.print("[yellow]gate off[/] (eval.gate: false): run `loraforge eval` before shipping this adapter")
        return
    console.print(gate_table(report))
    console.print(f"reports: {config.output / 'eval'}/report.{{json,md,html}}")
    if not report.passed:
        raise GateBlocked("eval gate blocked the adapter:\n" + "\n".join(f"  - {r}" for r in report.reasons))
    console.print("[bold green]gate: pass[/] (recorded in the adapter manifest)")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
