"""`loraforge demo`: the main job on the embedded default base."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from loraforge.config import DEFAULT_BASE

console = Console()


def demo(
    base: str = typer.Option(DEFAULT_BASE, help="Base to run the demo on."),
    quick: bool = typer.Option(False, help="A smaller, faster run (for the slow test set)."),
) -> None:
    """Run the main job on the embedded default base and show what each stage did."""
    from loraforge.pipeline.demo import run_demo

    with console.status("resolving the base (converted once, then cached)"):
        result = run_demo(base, max_new_tokens=24 if quick else 48)
    card = result.card
    console.print(
        f"[bold]base[/] {card.spec}: {card.architecture}, {card.parameters:,} parameters, "
        f"{card.layers} layers, loaded in {result.load_seconds:.1f}s\n[dim]fingerprint {card.fingerprint}[/]"
    )
    table = Table(title="greedy answers from the base", show_lines=True)
    table.add_column("prompt")
    table.add_column("base answer")
    for question, answer in result.answers:
        table.add_row(question, answer)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
