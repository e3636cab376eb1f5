"""Throughput of the data stage: `prepare_data` on a generated corpus, with and without PII.

    python bench/data_prepare.py --rows 200000            # both PII settings, SmolLM2 tokenizer
    python bench/data_prepare.py --rows 20000 --pii off   # a quick look

The corpus mimics examples/support_tickets (system + user email + JSON answer) with random
words, so rows are distinct; 1% of rows carry an email or phone number and 1% are exact
duplicates. Prints one JSON line per run: rows/s, seconds, peak RSS, and the report's counts.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from loraforge.config import DataSpec
from loraforge.data import prepare_data
from loraforge.models import load_tokenizer

SYSTEM = (
    "Extract the support ticket as JSON with keys order_id (or null), product, issue_type, urgency. "
    "Reply with JSON only."
)
WORDS = (
    "order arrived broken late missing refund charged twice wireless earbuds standing desk espresso "
    "machine kettle skillet duvet cover please help thanks tracking depot parcel box padding manual "
    "cable socket replacement store account invoice payment week today support team regards kind"
).split()


def write_corpus(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        email = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90)))
        if i % 100 == 7:
            email += rng.choice([" mail me at someone@example.com", " call me on +1 415 555 0100"])
        answer = json.dumps({"order_id": f"ORD-{rng.randint(10000, 99999)}", "product": rng.choice(WORDS)})
        row = {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": email},
                {"role": "assistant", "content": answer},
            ]
        }
        lines.append(json.dumps(row))
        if i % 100 == 42:
            lines.append(lines[-1])  # an exact duplicate
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(train: Path, pii: str, base: str) -> dict[str, object]:
    tokenizer = load_tokenizer(base)
    spec = DataSpec(train=train, pii=pii)  # type: ignore[arg-type]
    start = time.perf_counter()
    data = prepare_data(spec, tokenizer, seed=0, context_length=8192, out_dir=None, cache_dir=None, progress=True)
    seconds = time.perf_counter() - start
    report = data.report
    return {
        "pii": pii,
        "rows_in": report["rows_in"],
        "seconds": round(seconds, 1),
        "rows_per_s": round(report["rows_in"] / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "dropped": report["dropped"],
        "pii_counts": report["pii"]["counts"],
        "packing_efficiency": report["packing_efficiency"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pii", choices=["redact", "off", "both"], default="both")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.jsonl"
        write_corpus(train, args.rows)
        for pii in ["off", "redact"] if args.pii == "both" else [args.pii]:
            print(json.dumps(run(train, pii, args.base)), flush=True)


if __name__ == "__main__":
    main()
