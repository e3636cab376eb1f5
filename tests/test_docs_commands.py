"""Every `loraforge ...` command the README and docs/ show in a code block names a real command with
options and arguments it accepts, so a reader can run it as written (the run itself is the other
tests' job; this catches a renamed command or flag the moment it happens)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from loraforge.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GENERATED = {"cli.md", "config.md"}  # generated from --help and the config models; checked elsewhere
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.M | re.S)


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        if path.name in GENERATED:
            continue
        for block in FENCE.findall(path.read_text(encoding="utf-8")):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ")
                if " -m loraforge " in line:  # accelerate launch ... -m loraforge train, python -m loraforge
                    line = "loraforge " + line.split(" -m loraforge ", 1)[1]
                if line.startswith("loraforge "):
                    found.append((f"{path.relative_to(ROOT)}", line))
    return found


def test_the_docs_show_commands_at_all() -> None:
    files = {name for name, _ in documented_commands()}
    assert len(documented_commands()) >= 20 and {"README.md", "docs/getting-started.md"} <= files


@pytest.mark.parametrize(("where", "line"), documented_commands(), ids=lambda value: str(value)[:60])
def test_documented_command_parses(where: str, line: str) -> None:
    tokens = shlex.split(line, comments=True)[1:]
    command = typer.main.get_command(app)  # typer's own click: duck-typed below, not click's classes
    path = ["loraforge"]
    while hasattr(command, "commands") and tokens:
        if tokens[0] not in command.commands and getattr(command, "default_command", None):
            tokens.insert(0, command.default_command)  # `loraforge eval CONFIG` runs `loraforge eval gate CONFIG`
        if tokens[0] not in command.commands:
            break
        path.append(tokens[0])
        command = command.commands[tokens.pop(0)]
    assert not hasattr(command, "commands"), f"{where}: '{line}' names no command under {' '.join(path)}"
    try:
        command.make_context(" ".join(path), tokens)
    except Exception as exc:  # a usage error: unknown option, missing value or argument, bad type
        if type(exc).__name__ != "Exit":  # --help exits; that is fine
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            pytest.fail(f"{where}: '{line}' does not parse: {message}")
