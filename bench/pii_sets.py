"""False positives and recall of the PII scanner on the bundled sets (docs/data.md#pii).

    python bench/pii_sets.py            # figures for the pii.py on PYTHONPATH

tests/data/pii_lookalikes.jsonl holds dates, ids, versions, prices, times and quantities that
must come out unchanged; tests/data/pii_real.jsonl holds real PII that must be replaced by its
type's placeholder. Prints one JSON line: the false-positive rate, the recall and every miss.
Uses only PiiScanner.find and .redact, so it measures older versions of pii.py too.
"""

from __future__ import annotations

import json
from pathlib import Path

from loraforge.data.pii import PiiScanner

SETS = Path(__file__).resolve().parent.parent / "tests" / "data"


def _rows(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (SETS / name).read_text(encoding="utf-8").splitlines() if line]


def main() -> None:
    scanner = PiiScanner()
    lookalikes, real = _rows("pii_lookalikes.jsonl"), _rows("pii_real.jsonl")
    touched = []
    for row in lookalikes:
        found = scanner.find(row["text"])
        if found:
            touched.append({"text": row["text"], "as": sorted({f.entity_type for f in found})})
    missed = []
    for row in real:
        redacted = scanner.redact(row["text"], scanner.find(row["text"]))
        if row["value"] in redacted or f"<{row['entity']}>" not in redacted:
            missed.append({"text": row["text"], "want": row["entity"], "got": redacted})
    print(
        json.dumps(
            {
                "false_positive_rate": f"{len(touched)}/{len(lookalikes)}",
                "recall": f"{len(real) - len(missed)}/{len(real)}",
                "false_positives": touched,
                "missed": missed,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
