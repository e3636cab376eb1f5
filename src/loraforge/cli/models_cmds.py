"""`loraforge models show`."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

console = Console()
models_app = typer.Typer(help="Inspect base models.", no_args_is_help=True)


@models_app.command("show")
def show(
    base: str = typer.Argument(..., help="Alias (smollm2-135m-instruct), model directory, or .gguf file."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Print the base card: architecture, sizes, linear modules, chat template, fingerprint."""
    from loraforge.models import load_base  # deferred: torch/transformers imports cost seconds
    from loraforge.models.card import base_card

    card = base_card(load_base(base))
    if as_json:
        typer.echo(json.dumps(card.as_dict(), indent=2))
        return
    table = Table(title=f"base: {card.spec}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = {
        "architecture": card.architecture,
        "parameters": f"{card.parameters:,}",
        "layers": str(card.layers),
        "hidden size": str(card.hidden_size),
        "vocab": f"{card.vocab_size:,}",
        "context": f"{card.context_length:,}",
        "linear modules": ", ".join(card.linear_modules),
        "dtype": card.dtype,
        "directory": card.model_dir,
        "fingerprint": card.fingerprint,
        "chat template": card.chat_template_head,
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
