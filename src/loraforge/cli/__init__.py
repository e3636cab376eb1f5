"""The `loraforge` command: a thin shell over library calls (parse, call, render, exit code)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from loraforge import __version__
from loraforge.cli import (
    card_cmds,
    config_cmds,
    data_cmds,
    demo_cmds,
    docs_cmds,
    eval_cmds,
    feedback_cmds,
    merge_cmds,
    models_cmds,
    plan_cmds,
    registry_cmds,
    serve_cmds,
    ship_cmds,
    tenants_cmds,
    train_cmds,
)
from loraforge.errors import LoraforgeError

app = typer.Typer(
    name="loraforge",
    help="From a jsonl corpus to a tested, signed LoRA adapter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loraforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """From a jsonl corpus to a tested, signed LoRA adapter."""


config_cmds.register(app)
models_cmds.register(app)
demo_cmds.register(app)
data_cmds.register(app)
train_cmds.register(app)
eval_cmds.register(app)
plan_cmds.register(app)
ship_cmds.register(app)
registry_cmds.register(app)
docs_cmds.register(app)
merge_cmds.register(app)
card_cmds.register(app)
feedback_cmds.register(app)
tenants_cmds.register(app)
serve_cmds.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one message (no traceback) and exit 2 (3: gate blocked, 4: signature fails)."""
    try:
        result = app(args=argv, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except LoraforgeError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        code = 1
    except typer.exceptions.TyperException as exc:  # typer's own click: usage errors, missing arguments
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[bold red]error:[/] {exc}")
        code = int(getattr(exc, "exit_code", 2))
    if argv is None:
        sys.exit(code)
    return code
