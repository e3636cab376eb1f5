"""docs/recipe.md's key/default tables state the defaults config.py has: a changed default that the
recipe page still shows the old way fails here, so the hand-written reasons never drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from loraforge.config import Config

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "recipe.md"
UNSET = {"none", "unset", "unset (all)", "null", "off"}


def _recipe_defaults() -> list[tuple[str, str]]:
    """(key, default cell) from every table whose header is `| key | default | ...`."""
    rows: list[tuple[str, str]] = []
    in_table = False
    for line in RECIPE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[:2] == ["key", "default"]:
            in_table = True
        elif not cells:
            in_table = False
        elif in_table and not set(cells[0]) <= {"-"}:
            rows.append((cells[0].strip("`"), cells[1]))
    return rows


def _default(key: str) -> Any:
    section, _, name = key.partition(".")
    model = Config.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel), f"{key}: {section} is not a config section"
    field = model.model_fields[name]
    return field.get_default(call_default_factory=True)


def _matches(cell: str, value: Any) -> bool:
    text = cell.strip("`").strip().lower()
    if value is None:
        return text in UNSET
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, int | float):
        number = re.match(r"^-?[\d.]+(e-?\d+)?", text.replace(",", ""))
        return number is not None and float(number.group(0)) == float(value)
    return text == str(value).lower()


RECIPE_ROWS = _recipe_defaults()


def test_the_recipe_page_has_its_default_tables() -> None:
    assert len(RECIPE_ROWS) >= 20, RECIPE_ROWS


@pytest.mark.parametrize(("key", "cell"), RECIPE_ROWS, ids=[key for key, _ in RECIPE_ROWS])
def test_each_default_the_recipe_states_is_the_configs(key: str, cell: str) -> None:
    value = _default(key)
    assert _matches(cell, value), f"docs/recipe.md says {key} defaults to {cell!r}; config.py has {value!r}"
