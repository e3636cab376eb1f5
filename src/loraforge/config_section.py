"""What every config section shares: unknown keys are errors, and a default names its reason."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from loraforge import recipe


def why(key: str, what: str) -> str:
    """A field's description: what it does, then why its default is the recipe's (recipe.REASONS)."""
    return f"{what}. Why this default: {recipe.REASONS[key]}"


class Section(BaseModel):
    """A config section: unknown keys are errors, fields validate on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
