"""Exact and near-duplicate detection (MinHash LSH, datasketch) and golden-set leakage.

Rows are compared on their user and assistant text (system turns are left out: a shared system
prompt would make every row look alike). Exact duplicates compare lowercased, whitespace-collapsed
text; near duplicates compare word 5-grams (rows under 5 words use their words) by estimated Jaccard.
Rows stream through one at a time; only 16-byte digests and MinHash signatures are kept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

from loraforge.data.types import Record

NUM_PERM = 128  # MinHash permutations: Jaccard estimates within ~0.04 at 0.85, the usual dedup setting
SHINGLE_WORDS = 5  # word 5-grams: reworded copies share most, rows on one topic share few
MAX_EXAMPLES = 5  # examples per finding kept in the report
_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def dedup_text(record: Record) -> str:
    if record.kind == "text":
        return record.text or ""
    return "\n".join(f"{m['role']}: {m['content']}" for m in record.messages if m["role"] != "system")


def exact_key(text: str) -> bytes:
    normalised = _SPACE.sub(" ", text.casefold()).strip()
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def shingles(text: str) -> set[bytes]:
    words = _WORD.findall(text.casefold())
    if len(words) < SHINGLE_WORDS:
        return {w.encode("utf-8") for w in words}
    return {" ".join(words[i : i + SHINGLE_WORDS]).encode("utf-8") for i in range(len(words) - SHINGLE_WORDS + 1)}


_PERMUTATIONS: list[Any] = []  # drawn once: MinHash would otherwise redraw them for every row


def minhash(text: str) -> MinHash:
    if not _PERMUTATIONS:
        _PERMUTATIONS.append(MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32").permutations)
    signature = MinHash(num_perm=NUM_PERM, seed=1, permutations=_PERMUTATIONS[0], scheme="affine32")
    grams = shingles(text)
    if grams:
        signature.update_batch(list(grams))
    return signature


@dataclass
class Finding:
    line: int
    duplicate_of: int  # line of the row it duplicates (in the same file, or the golden file)
    kind: str  # "exact" or "near"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "duplicate_of": self.duplicate_of, "kind": self.kind}


@dataclass
class DedupIndex:
    """Rows seen so far, queryable for exact and near duplicates."""

    threshold: float
    exact: dict[bytes, int] = field(default_factory=dict)  # key -> first line
    signatures: dict[int, np.ndarray] = field(default_factory=dict)  # line -> hash values (uint32)
    lsh: MinHashLSH = field(init=False)

    def __post_init__(self) -> None:
        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)

    def find(self, text: str, signature: MinHash | None = None) -> tuple[Finding | None, MinHash]:
        """The first stored row `text` duplicates, if any (line 0 in the Finding is filled by the caller)."""
        key = exact_key(text)
        if key in self.exact:
            return Finding(0, self.exact[key], "exact"), signature or minhash(text)
        signature = signature or minhash(text)
        lines = self.near(signature)
        return (Finding(0, lines[0], "near") if lines else None), signature

    def near(self, signature: MinHash) -> list[int]:
        """Lines of every stored row whose estimated Jaccard with `signature` clears the threshold, in order."""
        hashes = signature.hashvalues.astype(np.uint32)
        # LSH returns candidates; keep only those whose estimated Jaccard clears the threshold
        found = [
            line
            for line in self.lsh.query(signature)
            if float(np.mean(self.signatures[line] == hashes)) >= self.threshold
        ]
        return sorted(found)

    def add(self, line: int, text: str, signature: MinHash) -> None:
        self.exact.setdefault(exact_key(text), line)
        if line not in self.signatures:
            self.lsh.insert(line, signature, check_duplication=False)
            self.signatures[line] = signature.hashvalues.astype(np.uint32)


@dataclass
class HygieneResult:
    kept: list[Record]
    duplicates: list[Finding] = field(default_factory=list)
    leaked: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "exact_duplicate": sum(1 for f in self.duplicates if f.kind == "exact"),
            "near_duplicate": sum(1 for f in self.duplicates if f.kind == "near"),
            "leaked": len(self.leaked),
        }


def golden_index(golden: Iterable[Record], threshold: float) -> DedupIndex:
    index = DedupIndex(threshold)
    for record in golden:
        text = dedup_text(record)
        index.add(record.line, text, minhash(text))
    return index


def clean_records(
    records: Iterable[Record], *, threshold: float, dedup: bool, golden: DedupIndex | None
) -> HygieneResult:
    """Drop rows that duplicate the golden set (leakage) and, when `dedup`, earlier rows of the file."""
    result = HygieneResult(kept=[])
    seen = DedupIndex(threshold) if dedup else None
    for record in records:
        text = dedup_text(record)
        signature: MinHash | None = None
        if golden is not None:
            finding, signature = golden.find(text)
            if finding is not None:
                finding.line = record.line
                result.leaked.append(finding)
                continue
        if seen is not None:
            finding, signature = seen.find(text, signature)
            if finding is not None:
                finding.line = record.line
                result.duplicates.append(finding)
                continue
            seen.add(record.line, text, signature)
        result.kept.append(record)
    return result
