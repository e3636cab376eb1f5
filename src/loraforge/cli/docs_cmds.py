"""`loraforge docs cli [--out FILE]`: docs/cli.md, every command's `--help` rendered as plain Markdown;
`loraforge docs manifest-fields`: the field table of docs/manifest.md, from the manifest's schema."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from loraforge.files import write_text_atomic

HELP_WIDTH = 100  # fixed, so the page is the same on every terminal and in CI
PROG_NAME = "loraforge"  # fixed, so `python -m loraforge` and the script render the same usage lines


def _plain_help(command: TyperCommand | TyperGroup, ctx: typer.Context) -> str:
    # rich_markup_mode=None selects click's plain formatter: no ANSI, no boxes, wrapped at the
    # context's fixed width. get_group() builds fresh command objects, so the app is untouched.
    command.rich_markup_mode = None
    return command.get_help(ctx).rstrip("\n")


def _walk(command: TyperCommand | TyperGroup, ctx: typer.Context) -> list[tuple[str, str]]:
    pages = [(ctx.command_path, _plain_help(command, ctx))]
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if not isinstance(sub, TyperCommand | TyperGroup) or sub.hidden:
                continue
            pages += _walk(sub, typer.Context(sub, info_name=name, parent=ctx))
    return pages


def cli_markdown(app: typer.Typer) -> str:
    """docs/cli.md: the `--help` of every command of `app`, plain text at a fixed width (CI checks it)."""
    root = typer.main.get_group(app)
    ctx = typer.Context(root, info_name=PROG_NAME, terminal_width=HELP_WIDTH, max_content_width=HELP_WIDTH)
    pages = _walk(root, ctx)
    out = [
        "# CLI reference",
        "",
        "Generated from the commands' `--help` by `loraforge docs cli`; do not edit by hand.",
        "Exit codes: 0 ok, 2 a user error (the message names what, where and the fix), 3 eval gate blocked,",
        "4 an adapter fails signature verification (`loraforge verify`).",
        "",
    ]
    out += [f"- [`{path}`](#{_anchor(path)})" for path, _ in pages]
    for path, text in pages:
        out += ["", f"## `{path}`", "", "```text", text, "```"]
    return "\n".join(out) + "\n"


def _anchor(command_path: str) -> str:
    """GitHub's anchor for the heading "## `loraforge config check`": backticks dropped, spaces to dashes."""
    return command_path.lower().replace(" ", "-")


def register(app: typer.Typer) -> None:
    docs_app = typer.Typer(help="Generate reference pages from the code.", no_args_is_help=True)

    @docs_app.command("cli")
    def cli(out: Path | None = typer.Option(None, help="Write to this file instead of stdout.")) -> None:
        """Print the CLI reference (docs/cli.md): every command's --help, plain text at a fixed width."""
        text = cli_markdown(app)
        if out is None:
            typer.echo(text, nl=False)
        else:
            write_text_atomic(out, text)

    @docs_app.command("manifest-fields")
    def manifest_fields() -> None:
        """Print docs/manifest.md's field table (Markdown), generated from the manifest schema's descriptions."""
        from loraforge.models.manifest import manifest_field_table  # loraforge.models imports torch: --help must not

        typer.echo(manifest_field_table(), nl=False)

    app.add_typer(docs_app, name="docs")
