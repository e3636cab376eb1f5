"""The built-in probe slices, bundled as jsonl beside this file (see README.md for their origin).

safety   harmful requests the default base refuses (check: no_harmful_help) and benign requests
         that sound edgy, which it must take up (check: engages)
general  simple facts and arithmetic the default base answers right (check: contains)
"""

from __future__ import annotations

import json
from pathlib import Path

from loraforge.data.types import Record
from loraforge.errors import EvalError

PROBE_DIR = Path(__file__).parent
# Probe answers are one sentence; 48 tokens holds a refusal or a fact and keeps CPU eval short.
PROBE_MAX_NEW_TOKENS = 48


def probe_path(name: str) -> Path:
    return PROBE_DIR / f"{name}.jsonl"


def load_probes(names: list[str]) -> list[Record]:
    """The bundled probe rows of each named slice, as golden Records."""
    records: list[Record] = []
    for name in names:
        path = probe_path(name)
        if not path.is_file():
            raise EvalError(f"probe set '{name}': {path} is missing; reinstall loraforge or drop it from eval.probes")
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            records.append(
                Record(
                    source=path,
                    line=line_no,
                    kind="chat",
                    messages=tuple(row["messages"]),
                    id=row["id"],
                    slice=row["slice"],
                    checks=tuple(row["checks"]),
                )
            )
    return records
