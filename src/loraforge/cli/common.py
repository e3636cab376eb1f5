"""Options shared by commands."""

from __future__ import annotations

from pathlib import Path

import typer

from loraforge.config import Config, load_config

SET_OPTION = typer.Option(
    None,
    "--set",
    help="Override a config key, typed by its field: --set train.lr=1e-4 (repeatable). "
    "Each key's default and why: `loraforge config explain KEY`.",
)


def load(config_path: Path, overrides: list[str] | None) -> Config:
    return load_config(config_path, overrides or [])
