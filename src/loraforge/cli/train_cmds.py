"""`loraforge train CONFIG [--set k=v] [--resume]` (also under `accelerate launch -m loraforge train`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from loraforge.cli.common import SET_OPTION, load
from loraforge.cli.render import report_gate, signing_line, train_table

console = Console()


def train(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    overrides: list[str] = SET_OPTION,
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in OUTPUT."),
) -> None:
    """Train, keep the best checkpoint in OUTPUT/adapter, gate it (exit 3 when blocked) and record the verdict."""
    from loraforge.pipeline.run import train_and_gate  # deferred: torch imports cost seconds

    config = load(config_path, overrides)
    outcome = train_and_gate(config, resume=resume)
    if not outcome.train.main_process:
        return  # under accelerate launch the main process reports
    console.print(train_table(outcome.train))
    report = outcome.gate
    if report is None:
        console.print("[yellow]gate off[/] (eval.gate: false): run `loraforge eval` before shipping this adapter")
        console.print(signing_line(None, None))
        return
    try:
        report_gate(console, report, config.output / "eval")  # the verdict is in the adapter manifest too
    finally:  # also when the gate blocks (report_gate raises): say it left the adapter unsigned
        console.print(signing_line(outcome.signature, report.passed))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
