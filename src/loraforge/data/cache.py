"""Content-addressed cache of a prepared data set: same bytes, spec, tokenizer and template, same key.

A cache entry is a directory (written atomically) with the token arrays in `tokens.npz` and the
report, golden records and resolved max_seq_len in `meta.json`, so a second `prepare` or `train`
on unchanged inputs loads in a fraction of a second instead of tokenizing again.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from loraforge.data.types import PreparedData, Record, TokenizedExample
from loraforge.files import atomic_dir

CACHE_VERSION = 2  # bump when the tokenized layout or labelling rules change, so old entries miss (2: replay tag)


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash of what decides token ids: the fast tokenizer's full JSON, or the vocab and specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return hashlib.sha256((payload + specials).encode("utf-8")).hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _flatten(examples: list[TokenizedExample]) -> dict[str, np.ndarray]:
    lengths = np.array([len(ex.input_ids) for ex in examples], dtype=np.int64)
    ids = np.fromiter((t for ex in examples for t in ex.input_ids), dtype=np.int64, count=int(lengths.sum()))
    labels = np.fromiter((t for ex in examples for t in ex.labels), dtype=np.int64, count=int(lengths.sum()))
    lines = np.array([ex.line for ex in examples], dtype=np.int64)
    truncated = np.array([ex.truncated for ex in examples], dtype=np.bool_)
    replay = np.array([ex.replay for ex in examples], dtype=np.bool_)
    return {"lengths": lengths, "ids": ids, "labels": labels, "lines": lines, "truncated": truncated, "replay": replay}


def _unflatten(arrays: dict[str, np.ndarray]) -> list[TokenizedExample]:
    ids = arrays["ids"].tolist()
    labels = arrays["labels"].tolist()
    out = []
    start = 0
    columns = (arrays[name].tolist() for name in ("lengths", "lines", "truncated", "replay"))
    for length, line, truncated, replay in zip(*columns, strict=True):
        end = start + length
        out.append(TokenizedExample(tuple(ids[start:end]), tuple(labels[start:end]), line, truncated, replay))
        start = end
    return out


def record_to_dict(record: Record) -> dict[str, Any]:
    return {
        "source": str(record.source),
        "line": record.line,
        "kind": record.kind,
        "messages": list(record.messages),
        "text": record.text,
        "id": record.id,
        "slice": record.slice,
        "checks": list(record.checks),
    }


def record_from_dict(raw: dict[str, Any]) -> Record:
    return Record(
        source=Path(raw["source"]),
        line=raw["line"],
        kind=raw["kind"],
        messages=tuple(raw["messages"]),
        text=raw["text"],
        id=raw["id"],
        slice=raw["slice"],
        checks=tuple(raw["checks"]),
    )


def save_prepared(cache_dir: Path, key: str, data: PreparedData) -> None:
    arrays = {f"train_{k}": v for k, v in _flatten(data.train).items()}
    arrays |= {f"eval_{k}": v for k, v in _flatten(data.eval).items()}
    meta = {
        "max_seq_len": data.max_seq_len,
        "report": data.report,
        "golden": [record_to_dict(r) for r in data.golden],
    }
    with atomic_dir(cache_dir / key) as tmp:
        np.savez(tmp / "tokens.npz", **arrays)  # type: ignore[arg-type]
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")


def load_prepared(cache_dir: Path, key: str) -> PreparedData | None:
    """The cached entry, or None when absent or damaged (then the caller tokenizes again and
    overwrites it), as the gate's base cache does."""
    entry = cache_dir / key
    if not (entry / "meta.json").is_file() or not (entry / "tokens.npz").is_file():
        return None
    try:
        return _read_entry(entry)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        warnings.warn(f"{entry}: damaged data cache entry ({exc}); tokenizing again", stacklevel=2)
        return None


def _read_entry(entry: Path) -> PreparedData:
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    with np.load(entry / "tokens.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    split = {
        part: _unflatten({k.removeprefix(f"{part}_"): v for k, v in arrays.items() if k.startswith(f"{part}_")})
        for part in ("train", "eval")
    }
    return PreparedData(
        train=split["train"],
        eval=split["eval"],
        golden=[record_from_dict(r) for r in meta["golden"]],
        max_seq_len=int(meta["max_seq_len"]),
        report=meta["report"],
    )
