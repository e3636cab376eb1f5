"""`loraforge prepare CONFIG [--set k=v] [--show N]`: run the data stage, print what it did."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from loraforge.cli.common import SET_OPTION, load
from loraforge.cli.render import data_summary

console = Console()
DEFAULT_CONTEXT = 2048  # used only when a base config states no max_position_embeddings


def _context_length(base_spec: str) -> int:
    from transformers import AutoConfig

    from loraforge.models import resolve_base

    config = AutoConfig.from_pretrained(str(resolve_base(base_spec)))
    return int(getattr(config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)


def prepare(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    overrides: list[str] = SET_OPTION,
    show: int = typer.Option(0, "--show", min=0, help="Render N training examples with trained tokens marked."),
) -> None:
    """Validate, clean and tokenize the data; print a summary and write OUTPUT/data_report.json.

    Bad rows stop it with every problem listed (exit 2, nothing written) unless data.on_error=skip.
    """
    from loraforge.data import prepare_data, render_marked
    from loraforge.models import load_tokenizer
    from loraforge.models.base import loraforge_home

    config = load(config_path, overrides)
    tokenizer = load_tokenizer(config.base)
    data = prepare_data(
        config.data,
        tokenizer,
        seed=config.train.seed,
        context_length=_context_length(config.base),
        out_dir=config.output,
        cache_dir=loraforge_home() / "data-cache",
        progress=True,
    )
    console.print(data_summary(data.report, config.output))
    color = sys.stdout.isatty()
    for example in data.train[:show]:
        marker = "trained tokens in green" if color else "trained tokens in [[brackets]]"
        console.rule(escape(f"line {example.line} ({example.n_loss_tokens} trained tokens; {marker})"))
        # print, not console.print: the text is the model's input, so no rich markup may alter it
        typer.echo(render_marked(example, tokenizer, color=color))


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
