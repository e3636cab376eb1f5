"""`loraforge init` and `loraforge config check|docs|explain`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax

from loraforge.cli.common import SET_OPTION, load
from loraforge.config import validate_config
from loraforge.config_text import reference_markdown, reference_rows, render_yaml
from loraforge.errors import ConfigError
from loraforge.files import write_text_atomic
from loraforge.recipe import DEFAULT_BASE

console = Console()
config_app = typer.Typer(help="Check a config, or print the config reference.", no_args_is_help=True)


def init(
    config_path: Path = typer.Argument(Path("loraforge.yaml"), help="Where to write the config."),
    base: str = typer.Option(DEFAULT_BASE, help="Base: alias, model directory or .gguf file."),
    train: Path = typer.Option(..., help="Training jsonl."),
    golden: Path | None = typer.Option(None, help="Golden jsonl for the eval gate."),
    output: Path | None = typer.Option(None, help="Run directory (default runs/<config name>)."),
    force: bool = typer.Option(False, help="Overwrite an existing config."),
) -> None:
    """Write a commented config whose defaults are the recipe."""
    if config_path.exists() and not force:
        raise ConfigError([f"{config_path} exists; pass --force to overwrite"], "init")
    raw = {
        "base": base,
        "output": str(output or Path("runs") / config_path.stem),
        "data": {"train": str(train), "golden": str(golden) if golden else None},
    }
    config = validate_config(raw, source="init", check_files=True)
    write_text_atomic(config_path, render_yaml(config))
    console.print(f"wrote {config_path}: check it with [bold]loraforge config check {config_path}[/]")


@config_app.command("check")
def check(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Validate a config and print it resolved, defaults included (exit 2 lists every problem)."""
    config = load(config_path, overrides)
    console.print(Syntax(render_yaml(config), "yaml", word_wrap=True))
    console.print(f"[green]ok[/]: {config_path} is valid")


@config_app.command("docs")
def docs(out: Path | None = typer.Option(None, help="Write to this file instead of stdout.")) -> None:
    """Print the config reference (docs/config.md) generated from the typed settings."""
    text = reference_markdown()
    if out is None:
        typer.echo(text, nl=False)
    else:
        write_text_atomic(out, text)


@config_app.command("explain")
def explain(
    key: str | None = typer.Argument(None, help="A key (train.lr) or a section (train); none: every key."),
) -> None:
    """Print each config key's type, default and why the recipe chose it (the source of docs/config.md)."""
    rows = reference_rows()
    chosen = [r for r in rows if key is None or r.key == key or r.section == key]
    if not chosen:
        sections = sorted({r.section for r in rows if r.section})
        raise ConfigError(
            [
                f"no config key or section {key!r}; sections: {', '.join(sections)} "
                "(`loraforge config explain` lists every key)"
            ],
            "config explain",
        )
    for row in chosen:
        console.print(f"[bold]{row.key}[/] ({row.type_name}, default {row.default.strip('`')})", highlight=False)
        width = min(console.width, 100)
        console.print(textwrap.fill(row.why, width, initial_indent="  ", subsequent_indent="  "), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.add_typer(config_app, name="config")
