"""The data stage for preference pairs (train.method: dpo): read, clean, split, tokenize, report.

Reading lives in pair_rows.py. Cleaning reuses hygiene's MinHash index: a pair is a duplicate of an
earlier one when its prompt, its chosen answer and its rejected answer each match that pair's (the
feedback export pairs one upvoted answer with several downvoted ones on the same prompt, and each of
those pairs teaches something different). A pair whose prompt matches a golden row's prompt is
dropped: training on the gate's questions would make the gate a memory test.

Tokenizing follows the SFT rule that the template's own rendering decides every token: prompt_ids
are the conversation rendered with the generation prompt, and each answer's ids are what the
conversation rendered with that assistant turn adds after them, through the end-of-turn marker
(the tokens an SFT row of the same conversation trains on).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from datasketch import MinHash
from tqdm import tqdm

from loraforge.config import DataSpec
from loraforge.data.cache import tokenizer_sha256
from loraforge.data.chat import render_text, resolve_chat_template, special_token_ids, template_sha256
from loraforge.data.hygiene import MAX_EXAMPLES, DedupIndex, Finding, exact_key, minhash
from loraforge.data.pair_rows import PairReadResult, read_pairs
from loraforge.data.prepare import TOKENIZE_BATCH, percentile, resolve_max_seq_len, split_held_out
from loraforge.data.types import Message, PairRecord, PreparedPairs, Record, TokenizedPair
from loraforge.errors import DataError

PII_NOTE = "not applied to preference pairs"  # not built for pairs yet: the report says so, so no one assumes it ran
REPLAY_NOTE = "not mixed into preference pairs"


class PairDropped(DataError):
    """One pair cannot be used as it is; `reason` is counted in the report and the other pairs go on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PairHygiene(NamedTuple):
    kept: list[PairRecord]
    dropped: Counter[str]  # reason (leaked, exact_duplicate, near_duplicate) -> pairs
    examples: dict[str, list[dict[str, Any]]]  # reason -> findings (every leaked pair; the first duplicates)


def prompt_text(messages: Iterable[Message]) -> str:
    """What similarity compares: user and assistant turns (a shared system prompt would make all alike)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def golden_prompt_text(record: Record) -> str:
    """A golden row's question: its turns before the last assistant turn (a text row: all of it)."""
    if record.kind == "text":
        return record.text or ""
    roles = [m["role"] for m in record.messages]
    last = len(roles) - 1 - roles[::-1].index("assistant") if "assistant" in roles else len(roles)
    return prompt_text(record.messages[:last])


@dataclass
class _PairIndex:
    """Pairs kept so far: exact keys over all three parts, and one MinHash index per part."""

    threshold: float
    exact: dict[bytes, int] = field(default_factory=dict)
    parts: tuple[DedupIndex, ...] = ()

    def __post_init__(self) -> None:
        self.parts = tuple(DedupIndex(self.threshold) for _ in range(3))

    def find(self, texts: tuple[str, str, str]) -> tuple[Finding | None, list[MinHash]]:
        signatures = [minhash(text) for text in texts]
        key = b"".join(exact_key(text) for text in texts)
        if key in self.exact:
            return Finding(0, self.exact[key], "exact"), signatures
        common = set(self.parts[0].near(signatures[0]))
        for part, signature in zip(self.parts[1:], signatures[1:], strict=True):
            common &= set(part.near(signature)) if common else set()
        return (Finding(0, min(common), "near") if common else None), signatures

    def add(self, line: int, texts: tuple[str, str, str], signatures: list[MinHash]) -> None:
        self.exact.setdefault(b"".join(exact_key(text) for text in texts), line)
        for part, text, signature in zip(self.parts, texts, signatures, strict=True):
            part.add(line, text, signature)


def clean_pairs(
    records: Iterable[PairRecord], golden: list[Record], near_dup_threshold: float, *, dedup: bool = True
) -> PairHygiene:
    """Drop pairs whose prompt is an exact or near copy of a golden row's prompt (leaked), then, when
    `dedup`, pairs that repeat an earlier pair (exact: same prompt, chosen and rejected after case and
    whitespace folding; near: each of the three at estimated Jaccard >= near_dup_threshold). The first
    of duplicates is kept."""
    golden_prompts = DedupIndex(near_dup_threshold)
    for row in golden:
        text = golden_prompt_text(row)
        golden_prompts.add(row.line, text, minhash(text))
    seen = _PairIndex(near_dup_threshold) if dedup else None
    kept: list[PairRecord] = []
    dropped: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        texts = (prompt_text(record.prompt), record.chosen, record.rejected)
        finding = golden_prompts.find(texts[0])[0] if golden else None
        reason = "leaked"
        signatures: list[MinHash] = []
        if finding is None and seen is not None:
            finding, signatures = seen.find(texts)
            reason = f"{finding.kind}_duplicate" if finding is not None else ""
        if finding is None:
            if seen is not None:
                seen.add(record.line, texts, signatures)
            kept.append(record)
            continue
        finding.line = record.line
        dropped[reason] += 1
        listed = examples.setdefault(reason, [])
        if reason == "leaked" or len(listed) < MAX_EXAMPLES:
            listed.append(finding.as_dict())
    return PairHygiene(kept, dropped, examples)


def _render_pair(record: PairRecord, tokenizer: Any, template: str) -> tuple[str, str, str]:
    prompt = list(record.prompt)
    prompt_rendered = render_text(tokenizer, prompt, template, add_generation_prompt=True)
    rendered = []
    for answer in (record.chosen, record.rejected):
        full = render_text(tokenizer, [*prompt, {"role": "assistant", "content": answer}], template, False)
        if not (full.startswith(prompt_rendered) and len(full) > len(prompt_rendered)):
            raise DataError(
                f"{record.where}: the chat template's generation prompt for this prompt is not the start of "
                "the conversation rendered with its answer, so the answer tokens cannot be located; "
                "set data.template to a template whose output grows turn by turn"
            )
        rendered.append(full)
    return prompt_rendered, rendered[0], rendered[1]


def _answer_ids(ids: list[int], special_ids: frozenset[int]) -> tuple[int, ...]:
    """The answer through its end-of-turn marker (the first special token), as SFT labels it: what a
    template writes after the marker (ChatML's newline) is never generated, so it carries no preference."""
    end = next((i + 1 for i, token in enumerate(ids) if token in special_ids), len(ids))
    return tuple(ids[:end])


def _pair_from_ids(
    record: PairRecord, prompt_ids: list[int], chosen: list[int], rejected: list[int], special_ids: frozenset[int]
) -> TokenizedPair:
    n = len(prompt_ids)
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        if ids[:n] != prompt_ids or len(ids) == n:
            raise PairDropped(
                "token_boundary",
                f"{record.where}: the tokenizer merges the end of the prompt with the start of the {name!r} "
                "answer, so the prompt's tokens are not a prefix of the whole conversation's; "
                "remove the answer's leading whitespace or drop the row",
            )
    return TokenizedPair(
        tuple(prompt_ids),
        _answer_ids(chosen[n:], special_ids),
        _answer_ids(rejected[n:], special_ids),
        line=record.line,
    )


def encode_pairs(records: list[PairRecord], tokenizer: Any, template: str) -> list[TokenizedPair | PairDropped]:
    """Each pair tokenized whole (not fitted to a length), or why it cannot be: one tokenizer call for all."""
    texts = [text for record in records for text in _render_pair(record, tokenizer, template)]
    # the template writes the special tokens itself; the tokenizer must not add another BOS
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    special_ids = special_token_ids(tokenizer)
    results: list[TokenizedPair | PairDropped] = []
    for index, record in enumerate(records):
        prompt_ids, chosen, rejected = (list(ids[3 * index + k]) for k in range(3))
        try:
            results.append(_pair_from_ids(record, prompt_ids, chosen, rejected, special_ids))
        except PairDropped as exc:
            results.append(exc)
    return results


def fit_pair(pair: TokenizedPair, max_seq_len: int, *, where: str) -> TokenizedPair:
    """Cut prompt tokens from the left until the prompt and the longer answer fit; answers are never cut."""
    if pair.length <= max_seq_len:
        return pair
    answer = max(len(pair.chosen_ids), len(pair.rejected_ids))
    if answer + 1 > max_seq_len:
        raise PairDropped(
            "answer_too_long",
            f"{where}: the longer answer ({answer} tokens) leaves no room for a prompt token in "
            f"max_seq_len={max_seq_len}; shorten the answer or raise data.max_seq_len",
        )
    return replace(pair, prompt_ids=pair.prompt_ids[len(pair.prompt_ids) - (max_seq_len - answer) :], truncated=True)


def tokenize_pair(tokenizer: Any, record: PairRecord, chat_template: str, max_seq_len: int) -> TokenizedPair:
    """Render and tokenize one pair, then fit it to max_seq_len.

    Raises DataError when the template does not grow turn by turn, and PairDropped (a DataError with
    a `reason`) when the tokens of the prompt are not a prefix of the conversation's (token_boundary)
    or the longer answer alone does not fit (answer_too_long)."""
    [result] = encode_pairs([record], tokenizer, chat_template)
    if isinstance(result, PairDropped):
        raise result
    return fit_pair(result, max_seq_len, where=record.where)


@dataclass
class _Stage:
    dropped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    truncated: int = 0


def _read_pair_files(spec: DataSpec) -> dict[str, PairReadResult]:
    """data.train and data.eval; in strict mode one DataError lists the problems of both."""
    results: dict[str, PairReadResult] = {}
    errors: list[str] = []
    for name, path in (("train", spec.train), ("eval", spec.eval)):
        if path is None:
            continue
        try:
            results[name] = read_pairs(path, max_row_chars=spec.max_row_chars, on_error=spec.on_error)
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise DataError("\n".join(errors))
    return results


def _tokenize_all(
    records: list[PairRecord], tokenizer: Any, template: str, stage: _Stage, desc: str, progress: bool
) -> list[tuple[PairRecord, TokenizedPair]]:
    kept: list[tuple[PairRecord, TokenizedPair]] = []
    with tqdm(total=len(records), desc=desc, unit="pair", disable=not progress) as bar:
        for start in range(0, len(records), TOKENIZE_BATCH):
            chunk = records[start : start + TOKENIZE_BATCH]
            for record, result in zip(chunk, encode_pairs(chunk, tokenizer, template), strict=True):
                if isinstance(result, PairDropped):
                    stage.dropped[result.reason] += 1
                    stage.problems.append(result.message)
                else:
                    kept.append((record, result))
            bar.update(len(chunk))
    return kept


def _fit_all(pairs: list[tuple[PairRecord, TokenizedPair]], max_seq_len: int, stage: _Stage) -> list[TokenizedPair]:
    fitted: list[TokenizedPair] = []
    for record, pair in pairs:
        try:
            fitted.append(fit_pair(pair, max_seq_len, where=record.where))
        except PairDropped as exc:
            stage.dropped[exc.reason] += 1
            stage.problems.append(exc.message)
            continue
        stage.truncated += fitted[-1].truncated
    return fitted


def prepare_pairs(
    spec: DataSpec, tokenizer: Any, *, seed: int, context_length: int, golden: list[Record], progress: bool = False
) -> PreparedPairs:
    """Read data.train (and data.eval, else hold out data.eval_fraction of the pairs, seeded), drop
    leaked and duplicate pairs, resolve max_seq_len from the train pairs' lengths, tokenize and fit.

    `golden` are the gate's rows (already read); with data.leakage_check they take no part in training.
    Raises DataError (strict mode: every bad row of both files listed)."""
    template = resolve_chat_template(tokenizer, spec.template)
    read = _read_pair_files(spec)
    stage = _Stage()
    for result in read.values():
        stage.dropped.update(result.skipped)
        stage.problems.extend(result.problems)
    leak_source = golden if spec.leakage_check else []
    hygiene = clean_pairs(read["train"].records, leak_source, spec.near_dup_threshold, dedup=spec.dedup)
    stage.dropped.update(hygiene.dropped)
    if "eval" in read:
        eval_clean = clean_pairs(read["eval"].records, leak_source, spec.near_dup_threshold, dedup=False)
        stage.dropped.update({f"eval_{reason}": n for reason, n in eval_clean.dropped.items()})
        train_records, eval_records = hygiene.kept, eval_clean.kept
    else:
        train_records, eval_records = split_held_out(hygiene.kept, spec.eval_fraction, seed)
    train_full = _tokenize_all(train_records, tokenizer, template, stage, "tokenize train pairs", progress)
    eval_full = _tokenize_all(eval_records, tokenizer, template, stage, "tokenize eval pairs", progress)
    lengths = sorted(pair.length for _, pair in train_full)
    if not lengths:
        raise DataError(f"no train pairs left after cleaning and tokenizing; dropped: {dict(stage.dropped)}")
    max_seq_len = resolve_max_seq_len(spec, lengths, context_length)
    train, eval_pairs = _fit_all(train_full, max_seq_len, stage), _fit_all(eval_full, max_seq_len, stage)
    if not train or not eval_pairs:
        raise DataError(
            f"no {'train' if not train else 'eval'} pairs left after cleaning and fitting to "
            f"max_seq_len={max_seq_len}; dropped: {dict(stage.dropped)}"
        )
    report = _report(
        spec, read, hygiene, stage, train=train, eval_pairs=eval_pairs, lengths=lengths, max_seq_len=max_seq_len,
        template=template, tokenizer=tokenizer, golden=golden, seed=seed,
    )  # fmt: skip
    return PreparedPairs(train=train, eval=eval_pairs, max_seq_len=max_seq_len, report=report, chat_template=template)


def _report(
    spec: DataSpec,
    read: dict[str, PairReadResult],
    hygiene: PairHygiene,
    stage: _Stage,
    *,
    train: list[TokenizedPair],
    eval_pairs: list[TokenizedPair],
    lengths: list[int],
    max_seq_len: int,
    template: str,
    tokenizer: Any,
    golden: list[Record],
    seed: int,
) -> dict[str, Any]:
    """data_report.json for a pairs run: counts, drops by reason, length percentiles, hashes (docs/data.md)."""
    return {
        "kind": "preference_pairs",
        "rows_in": read["train"].rows_in,
        "rows_kept": len(train) + (0 if "eval" in read else len(eval_pairs)),
        "split": {"train": len(train), "eval": len(eval_pairs), "eval_source": str(spec.eval or "held out")},
        "dropped": dict(sorted(stage.dropped.items())),
        "leaked": hygiene.dropped["leaked"],
        "leaked_rows": hygiene.examples.get("leaked", []),
        "duplicates": {
            "exact": hygiene.dropped["exact_duplicate"],
            "near": hygiene.dropped["near_duplicate"],
            "threshold": spec.near_dup_threshold,
            "examples": sorted(
                hygiene.examples.get("exact_duplicate", []) + hygiene.examples.get("near_duplicate", []),
                key=lambda finding: finding["line"],
            )[:MAX_EXAMPLES],
        },
        "problems": stage.problems[: MAX_EXAMPLES * 4],
        "max_seq_len": max_seq_len,
        "max_seq_len_source": "auto (p95, rounded up to 64)" if spec.max_seq_len == "auto" else "config",
        "truncated": stage.truncated,
        "percentiles": {f"p{p}": percentile(lengths, p) for p in (50, 90, 95, 99)} | {"max": lengths[-1]},
        "tokens": {
            "train_prompt": sum(len(pair.prompt_ids) for pair in train),
            "train_chosen": sum(len(pair.chosen_ids) for pair in train),
            "train_rejected": sum(len(pair.rejected_ids) for pair in train),
        },
        "pii": PII_NOTE,
        "replay": REPLAY_NOTE,
        "train_sha256": read["train"].sha256,
        "eval_sha256": read["eval"].sha256 if "eval" in read else None,
        "golden_rows": len(golden),
        "leakage_check": spec.leakage_check,
        "template_sha256": template_sha256(template),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "seed": seed,
    }
