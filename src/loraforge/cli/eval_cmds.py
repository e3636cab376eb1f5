"""`loraforge eval`: run the gate and exit 0 (pass) or 3 (block)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from loraforge.cli.common import SET_OPTION, load
from loraforge.cli.render import report_gate

console = Console()


def eval_command(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    adapter: Path | None = typer.Option(None, "--adapter", help="Adapter directory (default OUTPUT/adapter)."),
    against: Path | None = typer.Option(None, "--against", help="A previously shipped adapter to beat as well."),
    allow_new_golden: bool = typer.Option(
        False, "--allow-new-golden", help="Gate against a golden file whose hash changed since training."
    ),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Score the golden set and probes on base vs adapter per slice; exit 3 when the gate blocks."""
    from loraforge.pipeline.evaluate_run import EVAL_DIR_NAME, evaluate_run

    config = load(config_path, overrides)
    report = evaluate_run(config, adapter, against, allow_new_golden)
    report_gate(console, report, config.output / EVAL_DIR_NAME)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
