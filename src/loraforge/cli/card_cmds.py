"""`loraforge card ADAPTER_DIR`: regenerate the model card (README.md) from the adapter's manifest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def card_command(
    adapter_dir: Path = typer.Argument(..., help="Adapter directory with a loraforge.json (e.g. runs/NAME/adapter)."),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 when README.md differs from what the manifest renders to."
    ),
) -> None:
    """Write ADAPTER_DIR/README.md, the Hugging Face model card, from ADAPTER_DIR/loraforge.json.

    The card is generated, never edited by hand: front matter (base_model, library_name: peft, tags,
    license), the recipe, data lineage, the gate's per-slice table and verdict, and how to load the
    adapter in PEFT and vLLM. Regenerate it after re-gating; a signed adapter must be re-signed."""
    from loraforge.ship.card import card_is_current, write_model_card  # deferred: torch imports cost seconds

    if check:
        if not card_is_current(adapter_dir):
            console.print(f"{adapter_dir / 'README.md'} differs from its manifest; run: loraforge card {adapter_dir}")
            raise typer.Exit(1)
        console.print(f"{adapter_dir / 'README.md'} matches {adapter_dir / 'loraforge.json'}")
        return
    console.print(f"wrote {write_model_card(adapter_dir)}")


def register(app: typer.Typer) -> None:
    app.command("card")(card_command)
