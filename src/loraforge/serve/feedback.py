"""Feedback on served completions, kept in SQLite, and exported as preference pairs for DPO.

Every completion the server returns is recorded (tenant, model, prompt, answer); a client rates
it (+1 / -1) and may send a corrected answer. `export_dpo` turns one tenant's feedback into
`{"prompt", "chosen", "rejected"}` jsonl for the preference round (docs/feedback.md).

Durability: WAL with synchronous=FULL, one transaction per call, so a call that returned is in
the WAL on disk and survives a killed process or a power cut.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraforge.errors import LoraforgeError
from loraforge.files import loraforge_home, write_text_atomic

SCHEMA_VERSION = 1
FEEDBACK_FILENAME = "feedback.sqlite3"
DEFAULT_RETENTION_DAYS = 30.0
PURGE_INTERVAL_S = 3600.0  # record_completion purges at most hourly: a DELETE per request would cost a scan
SECONDS_PER_DAY = 86400.0

Prompt = list[dict[str, str]] | str

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,          -- JSON: the chat message list, or the completions prompt string
    answer TEXT NOT NULL,
    created REAL NOT NULL          -- unix seconds
);
CREATE INDEX IF NOT EXISTS completions_created ON completions (created);
CREATE INDEX IF NOT EXISTS completions_tenant ON completions (tenant, created);
CREATE TABLE IF NOT EXISTS feedback (
    completion_id TEXT PRIMARY KEY REFERENCES completions (id) ON DELETE CASCADE,
    tenant TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (1, -1)),
    edited TEXT,                   -- the client's corrected answer, or NULL
    created REAL NOT NULL
);
"""


class FeedbackError(LoraforgeError):
    """No completion with that id for this tenant. One message for an unknown id and another
    tenant's id, so ids cannot be probed across tenants (the HTTP layer answers 404)."""


class FeedbackInvalid(LoraforgeError):
    """The feedback itself is malformed: a rating not in {1, -1}, an empty edited text (HTTP 400)."""


def default_state_dir() -> Path:
    """Where `loraforge serve` keeps its state when --state-dir is not given."""
    return loraforge_home() / "serve"


def feedback_path(state_dir: Path) -> Path:
    return state_dir / FEEDBACK_FILENAME


@dataclass(frozen=True)
class FeedbackRow:
    """One completion with the feedback on it (latest wins); rating None when none was given."""

    completion_id: str
    tenant: str
    model: str
    prompt: Prompt
    answer: str
    created: float
    rating: int | None
    edited: str | None


@dataclass
class TenantStats:
    tenant: str
    completions: int = 0
    upvoted: int = 0
    downvoted: int = 0
    edited: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "completions": self.completions,
            "upvoted": self.upvoted,
            "downvoted": self.downvoted,
            "edited": self.edited,
        }


@dataclass
class ExportReport:
    """What `export_dpo` wrote: pairs by the rule that made them, rows skipped by reason."""

    tenant: str
    out: Path
    edited_pairs: int = 0  # chosen = the client's edit, rejected = the original answer
    rated_pairs: int = 0  # chosen = an upvoted answer, rejected = a downvoted one, same prompt
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        return self.edited_pairs + self.rated_pairs

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "out": str(self.out),
            "pairs": self.pairs,
            "edited_pairs": self.edited_pairs,
            "rated_pairs": self.rated_pairs,
            "skipped": dict(sorted(self.skipped.items())),
        }


class FeedbackStore:
    """Completions and feedback in one SQLite file; thread-safe (one connection behind a lock).

    `retention_days=None` keeps the retention the file was last opened with (what a CLI wants
    when reading a store a server owns: it must not purge with a shorter default).
    `create=False` refuses a missing file instead of creating an empty store.
    """

    def __init__(
        self, path: Path, retention_days: float | None = DEFAULT_RETENTION_DAYS, *, create: bool = True
    ) -> None:
        if retention_days is not None and not (retention_days > 0 and math.isfinite(retention_days)):
            raise LoraforgeError(f"feedback retention_days={retention_days!r}: must be a positive number of days")
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise LoraforgeError(
                f"{self.path}: no feedback store here; pass the --state-dir the server ran with "
                f"(it holds {FEEDBACK_FILENAME})"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # check_same_thread=False: the lock serialises use; isolation_level=None: we BEGIN ourselves
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self.retention_days = self._init_schema(retention_days)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise LoraforgeError(
                f"{self.path}: not a loraforge feedback store ({exc}); move it aside or pass another --state-dir"
            ) from exc
        except BaseException:
            self._conn.close()
            raise
        self._next_purge = 0.0
        self.purge_expired()

    def _init_schema(self, retention_days: float | None) -> float:
        with self._write() as conn:
            # statement by statement: executescript() would COMMIT the open transaction first
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            version = int(meta.get("schema_version", SCHEMA_VERSION))
            if version > SCHEMA_VERSION:
                raise LoraforgeError(
                    f"{self.path}: feedback schema version {version} is newer than this loraforge's "
                    f"({SCHEMA_VERSION}); upgrade loraforge to read it"
                )
            if retention_days is None:
                retention_days = float(meta.get("retention_days", DEFAULT_RETENTION_DAYS))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('retention_days', ?)", (repr(retention_days),))
        return retention_days

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; COMMIT returns once the WAL is fsynced (synchronous=FULL)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def record_completion(
        self,
        completion_id: str,
        tenant: str,
        model: str,
        prompt: Prompt,
        answer: str,
        *,
        now: float | None = None,
    ) -> None:
        """Store a completion the server returned, so feedback on its id can be taken later."""
        now = time.time() if now is None else now
        _check_prompt(completion_id, prompt)
        if now >= self._next_purge:
            self.purge_expired(now)
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO completions (id, tenant, model, prompt, answer, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (completion_id, tenant, model, json.dumps(prompt, ensure_ascii=False), answer, now),
                )
        except sqlite3.IntegrityError as exc:
            raise LoraforgeError(
                f"completion id {completion_id!r} is already recorded; completion ids must be unique per server"
            ) from exc

    def add_feedback(
        self, completion_id: str, tenant: str, rating: int, edited: str | None = None, *, now: float | None = None
    ) -> None:
        """Rate a completion (+1 / -1), optionally with a corrected answer. Feedback given again on
        the same id replaces the earlier one (the latest wins). Returns once committed to disk, so
        it blocks on an fsync: async code calls it from a thread pool."""
        if isinstance(rating, bool) or rating not in (1, -1):
            raise FeedbackInvalid(f"feedback on {completion_id!r}: rating {rating!r} must be 1 (good) or -1 (bad)")
        if edited is not None and not edited.strip():
            raise FeedbackInvalid(
                f"feedback on {completion_id!r}: 'edited' is empty; send the corrected answer or leave 'edited' out"
            )
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute("SELECT tenant FROM completions WHERE id = ?", (completion_id,)).fetchone()
            if row is None or row[0] != tenant:
                raise FeedbackError(
                    f"no completion {completion_id!r} for this API key: feedback takes the 'id' of a completion "
                    f"this key received in the last {self.retention_days:g} days"
                )
            conn.execute(
                "INSERT INTO feedback (completion_id, tenant, rating, edited, created) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (completion_id) DO UPDATE SET "
                "rating = excluded.rating, edited = excluded.edited, created = excluded.created",
                (completion_id, tenant, rating, edited, now),
            )

    def get(self, completion_id: str, tenant: str) -> FeedbackRow | None:
        """The completion and its feedback, or None if there is none for this tenant."""
        rows = self._rows("c.id = ? AND c.tenant = ?", (completion_id, tenant))
        return rows[0] if rows else None

    def rows(self, tenant: str) -> list[FeedbackRow]:
        """Every stored completion of `tenant`, oldest first, with its feedback (if any)."""
        return self._rows("c.tenant = ?", (tenant,))

    def _rows(self, where: str, params: tuple[Any, ...]) -> list[FeedbackRow]:
        query = (
            "SELECT c.id, c.tenant, c.model, c.prompt, c.answer, c.created, f.rating, f.edited "
            f"FROM completions c LEFT JOIN feedback f ON f.completion_id = c.id WHERE {where} "
            "ORDER BY c.created, c.id"
        )
        with self._lock:
            raw = self._conn.execute(query, params).fetchall()
        return [_row(self.path, values) for values in raw]

    def purge_expired(self, now: float | None = None) -> int:
        """Delete completions older than the retention, and the feedback on them; returns how many."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_days * SECONDS_PER_DAY
        with self._write() as conn:
            conn.execute(
                "DELETE FROM feedback WHERE completion_id IN (SELECT id FROM completions WHERE created < ?)", (cutoff,)
            )
            deleted = conn.execute("DELETE FROM completions WHERE created < ?", (cutoff,)).rowcount
        self._next_purge = now + PURGE_INTERVAL_S
        return int(deleted)

    def stats(self, tenant: str | None = None) -> list[TenantStats]:
        """Counts per tenant (or for one tenant), sorted by tenant name."""
        query = (
            "SELECT c.tenant, COUNT(*), SUM(f.rating = 1), SUM(f.rating = -1), SUM(f.edited IS NOT NULL) "
            "FROM completions c LEFT JOIN feedback f ON f.completion_id = c.id "
            + ("WHERE c.tenant = ? " if tenant is not None else "")
            + "GROUP BY c.tenant ORDER BY c.tenant"
        )
        with self._lock:
            raw = self._conn.execute(query, (tenant,) if tenant is not None else ()).fetchall()
        return [TenantStats(name, n, int(up or 0), int(down or 0), int(ed or 0)) for name, n, up, down, ed in raw]

    def export_dpo(self, tenant: str, out: Path, *, model: str | None = None) -> ExportReport:
        """Write `tenant`'s feedback as DPO preference pairs to `out` (jsonl, atomically).

        Rules: an edited answer gives (chosen=edit, rejected=original); for one prompt with
        upvoted and downvoted answers, each pairs an upvoted with a downvoted one (the shorter
        list is cycled, so every rated answer is used and none is paired with all of the others);
        a pair whose chosen and rejected are the same text is skipped. `model` keeps one model's rows.
        """
        report = ExportReport(tenant=tenant, out=Path(out))
        rows = [row for row in self.rows(tenant) if row.rating is not None and (model is None or row.model == model)]
        lines: list[str] = []
        seen: set[str] = set()
        for prompt, chosen, rejected, rule in _pairs(rows, report):
            if chosen.strip() == rejected.strip():
                report.skip("identical")
                continue
            line = json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False)
            if line in seen:
                report.skip("duplicate")
                continue
            seen.add(line)
            lines.append(line + "\n")
            if rule == "edited":
                report.edited_pairs += 1
            else:
                report.rated_pairs += 1
        # built in memory, then one atomic write: the rated pairs need every row of a prompt anyway
        try:
            write_text_atomic(report.out, "".join(lines))
        except OSError as exc:
            raise LoraforgeError(
                f"{report.out}: cannot write the export ({exc.strerror or exc}); pick a writable file path"
            ) from exc
        return report

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_prompt(completion_id: str, prompt: object) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()) for m in prompt
    ):
        return
    raise LoraforgeError(
        f"completion {completion_id!r}: prompt must be a string or a list of messages with string fields, "
        f"not {type(prompt).__name__}"
    )


def _row(path: Path, values: tuple[Any, ...]) -> FeedbackRow:
    completion_id, tenant, model, prompt_json, answer, created, rating, edited = values
    try:
        prompt = json.loads(prompt_json)
    except (TypeError, ValueError) as exc:
        raise LoraforgeError(
            f"{path}: completion {completion_id!r} has a prompt that is not JSON ({exc}); the row is damaged, "
            "delete it with sqlite3 or restore the file from a backup"
        ) from exc
    return FeedbackRow(completion_id, tenant, model, prompt, answer, created, rating, edited)


def _pairs(rows: list[FeedbackRow], report: ExportReport) -> Iterator[tuple[Prompt, str, str, str]]:
    """(prompt, chosen, rejected, rule) candidates, in the order the rows were recorded."""
    by_prompt: dict[str, tuple[list[FeedbackRow], list[FeedbackRow]]] = {}
    for row in rows:
        if row.edited is not None:
            yield row.prompt, row.edited, row.answer, "edited"
            continue
        key = json.dumps(row.prompt, sort_keys=True, ensure_ascii=False)
        ups, downs = by_prompt.setdefault(key, ([], []))
        (ups if row.rating == 1 else downs).append(row)
    for ups, downs in by_prompt.values():
        if not ups or not downs:
            for _ in ups:
                report.skip("upvoted_without_downvoted")
            for _ in downs:
                report.skip("downvoted_without_upvoted")
            continue
        # cycle the shorter list: every rated answer is used, and n answers make n pairs, not n*m
        for i in range(max(len(ups), len(downs))):
            up, down = ups[i % len(ups)], downs[i % len(downs)]
            yield up.prompt, up.answer, down.answer, "rated"
