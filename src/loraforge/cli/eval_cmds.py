"""`loraforge eval`: run the gate and exit 0 (pass) or 3 (block)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from loraforge.cli.common import SET_OPTION, load
from loraforge.cli.render import report_gate, signing_line

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
    """Score the golden set and probes on base vs adapter per slice, record the verdict in the adapter's
    manifest and card (re-signing with ship.key after a pass); exit 3 when the gate blocks."""
    from loraforge.pipeline.evaluate_run import EVAL_DIR_NAME
    from loraforge.pipeline.run import gate_and_record

    config = load(config_path, overrides)
    outcome = gate_and_record(config, adapter, against, allow_new_golden)
    adapter_dir = adapter or config.output / "adapter"
    if outcome.recorded:
        console.print(f"verdict recorded in {escape(str(adapter_dir / 'loraforge.json'))} and its model card")
        console.print(signing_line(outcome.signature, outcome.report.passed))
    else:
        where = escape(str(adapter_dir))
        console.print(f"[yellow]note[/]: {where} has no loraforge.json: the verdict is in the reports only")
    report_gate(console, outcome.report, config.output / EVAL_DIR_NAME)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
