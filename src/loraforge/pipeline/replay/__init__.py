"""The default forgetting guard: replay rows the base wrote itself (`data.replay: builtin`).

Trained on one narrow task alone, an adapter forgets: a label classifier answered "negative" to a
harmful request and "Japan" for the capital of Japan. Mixing in rows whose targets are the base's
own answers to general prompts pulls the adapter back to what the base already says, at no
labelling cost. `prompts.jsonl` holds 151 prompts written for loraforge (facts, arithmetic,
writing, benign how-tos, harmful requests with a refusal check), none repeating or near-repeating
a gate probe (tests/test_replay_builtin.py), so the gate stays an exam the adapter did not see.

The base's answers are shipped for the embedded base (`shipped.json` maps its fingerprint to
them, so the default costs nothing); any other base answers the prompts once through
`loraforge distill`'s path, cached under LORAFORGE_HOME/replay by fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from loraforge.config import DataSpec
from loraforge.data import resolve_chat_template
from loraforge.files import loraforge_home
from loraforge.models.base import resolve_base
from loraforge.models.fingerprint import base_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUILTIN_DIR = Path(__file__).parent
PROMPTS = BUILTIN_DIR / "prompts.jsonl"
SHIPPED = BUILTIN_DIR / "shipped.json"


def shipped_replay(fingerprint: str) -> Path | None:
    """The bundled answers of the base with this fingerprint, when they ship with loraforge."""
    name = json.loads(SHIPPED.read_text(encoding="utf-8")).get(fingerprint)
    return BUILTIN_DIR / name if name else None


def cached_replay_path(fingerprint: str, home: Path | None = None) -> Path:
    return (home or loraforge_home()) / "replay" / f"{fingerprint.removeprefix('sha256:')[:32]}.jsonl"


def builtin_replay(base_spec: str, template: str, progress: bool = False, prompts: Path = PROMPTS) -> Path:
    """The replay file for the base prompted in `template` (the one the run trains with): shipped,
    cached, or distilled now (once per base and template) and cached."""
    home = loraforge_home()
    fingerprint = base_fingerprint(resolve_base(base_spec), template, home / "fingerprints")
    shipped = shipped_replay(fingerprint)
    if shipped is not None:
        return shipped
    path = cached_replay_path(fingerprint, home)
    if not path.is_file():
        from loraforge.models import load_base
        from loraforge.pipeline.distill import distill, read_prompts, write_rows

        if progress:
            print(f"data.replay=builtin: the base answers {prompts} once; cached in {path}")
        result = distill(load_base(base_spec), read_prompts(prompts), progress=progress, chat_template=template)
        write_rows(path, result.rows)
    return path


def resolve_replay(
    spec: DataSpec, base_spec: str, tokenizer: PreTrainedTokenizerBase, progress: bool = False, prompts: Path = PROMPTS
) -> DataSpec:
    """`spec` with data.replay=builtin replaced by the file it stands for; other values unchanged."""
    if spec.replay != "builtin":
        return spec
    path = builtin_replay(base_spec, resolve_chat_template(tokenizer, spec.template), progress, prompts)
    if path.stat().st_size == 0:  # the base finished none of the prompts within the distill budget
        if progress:
            print(f"data.replay=builtin: the base finished none of the built-in prompts ({path}); no replay rows")
        return spec.model_copy(update={"replay": None})
    return spec.model_copy(update={"replay": path})
