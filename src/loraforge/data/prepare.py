"""The data stage in one call: read, validate, clean, split, tokenize, report, cache.

Order matters: duplicates and golden leakage are found on the raw text (before PII redaction
rewrites it), PII runs on the survivors only, and max_seq_len is resolved from the train rows'
token lengths before any row is truncated.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from loraforge.config import DataSpec
from loraforge.data.cache import cache_key, load_prepared, save_prepared, tokenizer_sha256
from loraforge.data.chat import (
    RowTooLong,
    encode_rendered,
    example_from_encoding,
    record_text,
    resolve_chat_template,
    template_sha256,
    truncate_example,
)
from loraforge.data.hygiene import MAX_EXAMPLES, HygieneResult, clean_records, golden_index
from loraforge.data.packing import pack_rows, packing_summary, resolve_pack_len
from loraforge.data.pii import PiiResult, PiiScanner, scan_records
from loraforge.data.records import ReadResult, read_records
from loraforge.data.types import PreparedData, Record, TokenizedExample
from loraforge.errors import DataError
from loraforge.files import sha256_file, write_json_atomic

REPORT_NAME = "data_report.json"
DATA_CACHE_SUBDIR = "cache/data"  # under LORAFORGE_HOME: one cache for prepare, train and the demo
AUTO_PERCENTILE = 95  # max_seq_len auto: covers 95% of rows whole; the longest 5% lose prompt tokens
SEQ_LEN_MULTIPLE = 64  # kernels and packing work in multiples of 64
TOKENIZE_BATCH = 512  # rows per tokenizer call: the Rust tokenizer batches across cores
T = TypeVar("T")


@dataclass
class _Stage:
    """What the stage has gathered so far, for the report."""

    dropped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    truncated: int = 0
    replay_rows: int = 0
    replay_distinct: int = 0


def _read_all(spec: DataSpec) -> dict[str, ReadResult]:
    """Read every file; in strict mode, one DataError lists the problems of all of them."""
    results: dict[str, ReadResult] = {}
    errors: list[str] = []
    for name, path in _named_paths(spec).items():
        if path is None:
            continue
        try:
            results[name] = read_records(
                path, on_error=spec.on_error, max_row_chars=spec.max_row_chars, golden=name == "golden"
            )
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise DataError("\n".join(errors))
    return results


def split_held_out(records: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out `fraction` of the rows for eval (at least 1, and at least 1 left to train), seeded."""
    if len(records) < 2:
        raise DataError(
            f"only {len(records)} usable train row(s) left; eval needs at least 1 held-out row and train 1; "
            "add rows or give data.eval"
        )
    n_eval = min(len(records) - 1, max(1, round(len(records) * fraction)))
    held = set(random.Random(seed).sample(range(len(records)), n_eval))
    train = [r for i, r in enumerate(records) if i not in held]
    held_out = [r for i, r in enumerate(records) if i in held]
    return train, held_out


def _tokenize_all(
    records: list[Record], tokenizer: Any, spec: DataSpec, template: str, desc: str, progress: bool
) -> list[TokenizedExample]:
    examples: list[TokenizedExample] = []
    with tqdm(total=len(records), desc=desc, unit="row", disable=not progress) as bar:
        for start in range(0, len(records), TOKENIZE_BATCH):
            chunk = records[start : start + TOKENIZE_BATCH]
            rendered = [record_text(r, tokenizer, train_on=spec.train_on, chat_template=template) for r in chunk]
            encoded = encode_rendered(tokenizer, [text for text, _ in rendered])
            for record, (_, spans), (ids, offsets) in zip(chunk, rendered, encoded, strict=True):
                examples.append(example_from_encoding(record, ids, offsets, spans, tokenizer))
            bar.update(len(chunk))
    return examples


def _replay_mix(replay: list[Record], n_task: int, ratio: float | None, seed: int) -> list[Record]:
    """Replay rows for one epoch, tagged `replay`: each once, or repeated in a seeded order to make
    `ratio` of the rows."""
    tagged = [replace(record, replay=True) for record in replay]
    if ratio is None or not tagged:
        return tagged
    wanted = round(ratio * n_task / (1 - ratio))
    order = list(range(len(tagged)))
    random.Random(seed).shuffle(order)
    return [tagged[order[i % len(order)]] for i in range(wanted)]


def percentile(sorted_values: list[int], pct: float) -> int:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def resolve_max_seq_len(spec: DataSpec, lengths: list[int], context_length: int) -> int:
    if spec.max_seq_len != "auto":
        if spec.max_seq_len > context_length:
            raise DataError(
                f"data.max_seq_len={spec.max_seq_len} exceeds the base's context of {context_length} tokens; "
                f"lower it or use 'auto'"
            )
        return spec.max_seq_len
    p95 = percentile(sorted(lengths), AUTO_PERCENTILE)
    return min(context_length, max(SEQ_LEN_MULTIPLE, math.ceil(p95 / SEQ_LEN_MULTIPLE) * SEQ_LEN_MULTIPLE))


def _fit(examples: list[TokenizedExample], max_seq_len: int, stage: _Stage) -> list[TokenizedExample]:
    kept = []
    for example in examples:
        if example.n_loss_tokens == 0:
            stage.dropped["no_trained_tokens"] += 1
            continue
        try:
            fitted = truncate_example(example, max_seq_len)
        except RowTooLong as exc:
            stage.dropped[exc.reason] += 1
            stage.problems.append(exc.message)
            continue
        stage.truncated += fitted.truncated
        kept.append(fitted)
    return kept


def _pii(records: list[Record], spec: DataSpec, scanner: PiiScanner | None) -> PiiResult:
    if scanner is None:
        return PiiResult(records=records)
    return scan_records(records, scanner, redact=spec.pii == "redact")


def prepare_data(
    spec: DataSpec,
    tokenizer: Any,
    *,
    seed: int,
    context_length: int,
    out_dir: Path | None,
    cache_dir: Path | None,
    progress: bool = False,
) -> PreparedData:
    """Validate, clean, split and tokenize the data; write out_dir/data_report.json; reuse the cache.

    Raises DataError (strict mode: every bad row listed, nothing written).
    """
    template = resolve_chat_template(tokenizer, spec.template)
    hashes = {name: sha256_file(path) for name, path in _paths(spec).items()}
    key = cache_key(
        {
            "files": hashes,
            "spec": spec.model_dump(mode="json", exclude=set(_named_paths(spec))),
            "tokenizer": tokenizer_sha256(tokenizer),
            "template": template_sha256(template),
            "seed": seed,
            "context_length": context_length,
        }
    )
    cached = load_prepared(cache_dir, key) if cache_dir is not None else None
    if cached is not None:
        cached.report["cached"] = True
        cached.chat_template = template  # part of the key, so the template that rendered the entry
        write_data_report(out_dir, cached.report)
        return cached
    data = _prepare_fresh(spec, tokenizer, template, seed=seed, context_length=context_length, progress=progress)
    data.report["cache_key"] = key
    if cache_dir is not None:
        save_prepared(cache_dir, key, data)
    data.report["cached"] = False
    write_data_report(out_dir, data.report)
    return data


def _named_paths(spec: DataSpec) -> dict[str, Path | None]:
    if spec.replay == "builtin":
        raise DataError(
            "prepare_data(spec=...): data.replay=builtin names no file yet; resolve it first with "
            "loraforge.pipeline.replay.resolve_replay (the CLI, training and the demo do)"
        )
    return {"train": spec.train, "eval": spec.eval, "golden": spec.golden, "replay": spec.replay}


def _paths(spec: DataSpec) -> dict[str, Path]:
    return {name: path for name, path in _named_paths(spec).items() if path is not None and path.is_file()}


def write_data_report(out_dir: Path | None, report: dict[str, Any]) -> None:
    if out_dir is not None:
        write_json_atomic(out_dir / REPORT_NAME, report)


def _prepare_fresh(
    spec: DataSpec, tokenizer: Any, template: str, *, seed: int, context_length: int, progress: bool
) -> PreparedData:
    read = _read_all(spec)
    scanner = PiiScanner(spec.pii_ner_model) if spec.pii != "off" else None  # fails early on a bad model path
    stage = _Stage()
    for result in read.values():
        stage.dropped.update(result.skipped)
        stage.problems.extend(result.problems)
    golden = read["golden"].records if "golden" in read else []
    index = golden_index(golden, spec.near_dup_threshold) if golden and spec.leakage_check else None
    rows = tqdm(read["train"].records, desc="dedup + leakage", unit="row", disable=not progress)
    hygiene = clean_records(rows, threshold=spec.near_dup_threshold, dedup=spec.dedup, golden=index)
    stage.dropped.update({k: v for k, v in hygiene.counts().items() if v})
    if "eval" in read:
        eval_clean = clean_records(read["eval"].records, threshold=spec.near_dup_threshold, dedup=False, golden=index)
        stage.dropped.update({"eval_leaked": len(eval_clean.leaked)} if eval_clean.leaked else {})
        train_records, eval_records = hygiene.kept, eval_clean.kept
    else:
        train_records, eval_records = split_held_out(hygiene.kept, spec.eval_fraction, seed)
    if "replay" in read:  # mixed into training only: eval loss keeps measuring the task
        replay = clean_records(
            read["replay"].records, threshold=spec.near_dup_threshold, dedup=spec.dedup, golden=index
        )
        stage.dropped.update({f"replay_{k}": v for k, v in replay.counts().items() if v})
        mixed = _replay_mix(replay.kept, len(train_records), spec.replay_ratio, seed)
        stage.replay_rows, stage.replay_distinct = len(mixed), len(replay.kept)
        train_records = train_records + mixed
    pii = _pii(train_records + eval_records, spec, scanner)
    n_train = len(train_records)
    train_records, eval_records = pii.kept(0, n_train), pii.kept(n_train, len(pii.records))
    stage.dropped.update({"pii_dependent": len(pii.dropped)} if pii.dropped else {})
    train_full = _tokenize_all(train_records, tokenizer, spec, template, "tokenize train", progress)
    eval_full = _tokenize_all(eval_records, tokenizer, spec, template, "tokenize eval", progress)
    lengths = [len(ex.input_ids) for ex in train_full]
    max_seq_len = resolve_max_seq_len(spec, lengths, context_length)
    train = _fit(train_full, max_seq_len, stage)
    eval_examples = _fit(eval_full, max_seq_len, stage)
    if not train or not eval_examples:
        raise DataError(
            f"no {'train' if not train else 'eval'} rows left after cleaning and fitting to max_seq_len={max_seq_len}; "
            f"dropped: {dict(stage.dropped)}"
        )
    report = build_report(
        read, hygiene, pii, stage, spec, train=train, eval_examples=eval_examples, lengths=lengths,
        max_seq_len=max_seq_len, template=template, tokenizer=tokenizer, seed=seed,
    )  # fmt: skip
    return PreparedData(
        train=train, eval=eval_examples, golden=golden, max_seq_len=max_seq_len, report=report, chat_template=template
    )


def build_report(
    read: dict[str, ReadResult],
    hygiene: HygieneResult,
    pii: PiiResult,
    stage: _Stage,
    spec: DataSpec,
    *,
    train: list[TokenizedExample],
    eval_examples: list[TokenizedExample],
    lengths: list[int],
    max_seq_len: int,
    template: str,
    tokenizer: Any,
    seed: int,
) -> dict[str, Any]:
    """data_report.json: counts, drops by reason, percentiles, packing, hashes (see docs/data.md)."""
    ordered = sorted(lengths)
    packing = None
    if spec.packing:
        row_len = resolve_pack_len(spec.pack_len, max_seq_len)
        packing = packing_summary(pack_rows(train, spec, max_seq_len, seed), row_len)
    return {
        "rows_in": read["train"].rows_in,
        "rows_kept": len(train) - stage.replay_rows + (0 if spec.eval is not None else len(eval_examples)),
        "split": {
            "train": len(train),
            "eval": len(eval_examples),
            "eval_source": str(spec.eval or "held out"),
            "replay": stage.replay_rows,
            "replay_distinct": stage.replay_distinct,
        },
        "dropped": dict(sorted(stage.dropped.items())),
        "leaked": len(hygiene.leaked),
        "leaked_rows": [f.as_dict() for f in hygiene.leaked],
        "duplicates": {
            "exact": sum(1 for f in hygiene.duplicates if f.kind == "exact"),
            "near": sum(1 for f in hygiene.duplicates if f.kind == "near"),
            "threshold": spec.near_dup_threshold,
            "examples": [f.as_dict() for f in hygiene.duplicates[:MAX_EXAMPLES]],
        },
        "problems": stage.problems[: MAX_EXAMPLES * 4],
        "max_seq_len": max_seq_len,
        "max_seq_len_source": "auto (p95, rounded up to 64)" if spec.max_seq_len == "auto" else "config",
        "truncated": stage.truncated,
        "percentiles": {f"p{p}": percentile(ordered, p) for p in (50, 90, 95, 99)} | {"max": ordered[-1]},
        "packing": spec.packing,
        "packing_efficiency": packing["efficiency"] if packing else None,
        "packed": packing,
        "tokens": {
            "train": sum(len(ex.input_ids) for ex in train),
            "train_loss": sum(ex.n_loss_tokens for ex in train),
        },
        "train_on": spec.train_on,
        "pii": {
            "mode": spec.pii,
            "ner": spec.pii_ner_model is not None,
            "rows_with_pii": pii.rows_with_pii,
            "counts": pii.counts,
            "rows_by_recognizer": pii.rows_by_recognizer,
            "examples": pii.examples,
            "dropped_dependent": len(pii.dropped),
            "dropped_examples": pii.dropped_examples,
        },
        "train_sha256": read["train"].sha256,
        "eval_sha256": read["eval"].sha256 if "eval" in read else None,
        "replay_sha256": read["replay"].sha256 if "replay" in read else None,
        "golden_sha256": read["golden"].sha256 if "golden" in read else None,
        "golden_rows": len(read["golden"].records) if "golden" in read else 0,
        "template_sha256": template_sha256(template),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "seed": seed,
    }
