from __future__ import annotations

from pathlib import Path

import typer

from loraforge.cli import app, main
from loraforge.cli.docs_cmds import HELP_WIDTH, cli_markdown

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _command_paths(group: typer.core.TyperGroup, prefix: str) -> list[str]:
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        paths.append(path)
        if isinstance(command, typer.core.TyperGroup):
            paths += _command_paths(command, path)
    return paths


def test_cli_md_is_current() -> None:
    expected = cli_markdown(app)
    assert CLI_MD.read_text(encoding="utf-8") == expected, (
        "docs/cli.md is stale: run 'python -m loraforge docs cli --out docs/cli.md'"
    )


def test_every_command_has_a_section() -> None:
    text = cli_markdown(app)
    paths = _command_paths(typer.main.get_group(app), "loraforge")
    assert len(paths) > 5
    missing = [path for path in paths if f"## `{path}`" not in text]
    assert missing == []


def test_help_is_plain_text_within_the_fixed_width() -> None:
    text = cli_markdown(app)
    assert "\x1b" not in text and "╭" not in text
    assert max(len(line) for line in text.splitlines()) <= HELP_WIDTH


def test_docs_cli_out_writes_the_page(tmp_path: Path) -> None:
    out = tmp_path / "cli.md"
    assert main(["docs", "cli", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == cli_markdown(app)
