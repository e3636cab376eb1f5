"""FeedbackStore on a real SQLite file: durability, tenant isolation, retention, the DPO export,
and `loraforge feedback` through the CLI's own entry point."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraforge.cli import main
from loraforge.errors import LoraforgeError
from loraforge.serve.feedback import (
    SECONDS_PER_DAY,
    FeedbackError,
    FeedbackInvalid,
    FeedbackStore,
    feedback_path,
)

SRC = Path(__file__).resolve().parents[1] / "src"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
DAY = SECONDS_PER_DAY


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    with FeedbackStore(feedback_path(tmp_path / "state")) as opened:
        yield opened


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the store -----------------------------------------------------------------------------------


def test_feedback_round_trips_through_a_new_store(tmp_path: Path) -> None:
    path = feedback_path(tmp_path)
    with FeedbackStore(path) as first:
        first.record_completion("chatcmpl-1", "acme", "support-bot", CHAT, "Paris.")
        first.add_feedback("chatcmpl-1", "acme", -1, edited="Paris is the capital of France.")
    with FeedbackStore(path) as second:
        row = second.get("chatcmpl-1", "acme")
    assert row is not None
    assert (row.model, row.prompt, row.answer) == ("support-bot", CHAT, "Paris.")
    assert (row.rating, row.edited) == (-1, "Paris is the capital of France.")


def test_store_is_wal_with_synchronous_full(store: FeedbackStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert dict(conn.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == "1"
    finally:
        conn.close()
    assert store._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 = FULL


def test_another_tenants_completion_gets_the_same_error_as_an_unknown_id(store: FeedbackStore) -> None:
    store.record_completion("cmpl-b", "beta", "m", "Once upon", " a time")
    with pytest.raises(FeedbackError) as foreign:
        store.add_feedback("cmpl-b", "acme", 1)
    with pytest.raises(FeedbackError) as unknown:
        store.add_feedback("cmpl-nope", "acme", 1)
    assert str(foreign.value).replace("cmpl-b", "ID") == str(unknown.value).replace("cmpl-nope", "ID")
    assert "beta" not in str(foreign.value)
    assert store.get("cmpl-b", "acme") is None
    row = store.get("cmpl-b", "beta")
    assert row is not None and row.rating is None


@pytest.mark.parametrize("rating", [0, 2, -2, True])
def test_rating_other_than_plus_or_minus_one_is_refused(store: FeedbackStore, rating: int) -> None:
    store.record_completion("c1", "acme", "m", CHAT, "Paris.")
    with pytest.raises(FeedbackInvalid, match="must be 1 .good. or -1 .bad."):
        store.add_feedback("c1", "acme", rating)


def test_empty_edited_text_is_refused(store: FeedbackStore) -> None:
    store.record_completion("c1", "acme", "m", CHAT, "Paris.")
    with pytest.raises(FeedbackInvalid, match="'edited' is empty"):
        store.add_feedback("c1", "acme", -1, edited="  \n")
    row = store.get("c1", "acme")
    assert row is not None and row.rating is None


def test_latest_feedback_on_an_id_wins(store: FeedbackStore) -> None:
    store.record_completion("c1", "acme", "m", CHAT, "Paris.")
    store.add_feedback("c1", "acme", -1, edited="Paris, France.")
    store.add_feedback("c1", "acme", 1)
    row = store.get("c1", "acme")
    assert row is not None and (row.rating, row.edited) == (1, None)
    assert [s.as_dict() for s in store.stats("acme")] == [
        {"tenant": "acme", "completions": 1, "upvoted": 1, "downvoted": 0, "edited": 0}
    ]


def test_duplicate_completion_id_is_refused(store: FeedbackStore) -> None:
    store.record_completion("c1", "acme", "m", CHAT, "Paris.")
    with pytest.raises(LoraforgeError, match="already recorded"):
        store.record_completion("c1", "beta", "m", CHAT, "Lyon.")
    row = store.get("c1", "acme")
    assert row is not None and row.answer == "Paris."


def test_prompt_that_is_neither_text_nor_messages_is_refused(store: FeedbackStore) -> None:
    with pytest.raises(LoraforgeError, match="prompt must be a string or a list of messages"):
        store.record_completion("c1", "acme", "m", [{"role": "user", "content": 3}], "x")  # type: ignore[dict-item]


_KILLED_CHILD = """
import sys, time
from pathlib import Path
from loraforge.serve.feedback import FeedbackStore
store = FeedbackStore(Path(sys.argv[1]))
store.record_completion("cmpl-k", "acme", "m", "Say hi", "hi")
store.add_feedback("cmpl-k", "acme", -1, edited="Hello!")
print("returned", flush=True)
time.sleep(120)
"""


def test_returned_feedback_survives_kill_9(tmp_path: Path) -> None:
    path = feedback_path(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "returned\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    # never closed, so never checkpointed: the rows live only in the WAL the new store recovers
    assert Path(f"{path}-wal").stat().st_size > 0
    with FeedbackStore(path) as reopened:
        row = reopened.get("cmpl-k", "acme")
    assert row is not None and (row.rating, row.edited) == (-1, "Hello!")


def test_concurrent_writers_lose_no_rows(store: FeedbackStore) -> None:
    def write(worker: int) -> None:
        for i in range(20):
            store.record_completion(f"w{worker}-{i}", "acme", "m", CHAT, f"answer {worker} {i}")
            store.add_feedback(f"w{worker}-{i}", "acme", 1 if i % 2 else -1)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [stats] = store.stats("acme")
    assert (stats.completions, stats.upvoted, stats.downvoted) == (120, 60, 60)


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = feedback_path(tmp_path)
    FeedbackStore(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(LoraforgeError, match="schema version 9 is newer than this loraforge's"):
        FeedbackStore(path)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = feedback_path(tmp_path)
    path.write_text("not a database, just text that is long enough to fill a header " * 4)
    with pytest.raises(LoraforgeError, match="not a loraforge feedback store"):
        FeedbackStore(path)


# --- retention -----------------------------------------------------------------------------------


def test_purge_deletes_expired_completions_and_their_feedback(tmp_path: Path) -> None:
    now = time.time()
    with FeedbackStore(feedback_path(tmp_path), retention_days=7) as store:
        store.record_completion("old", "acme", "m", CHAT, "a", now=now - 8 * DAY)
        store.add_feedback("old", "acme", 1)
        store.record_completion("new", "acme", "m", CHAT, "b", now=now - 6 * DAY)
        assert store.purge_expired(now=now) == 1
        assert [row.completion_id for row in store.rows("acme")] == ["new"]
        assert store._conn.execute("SELECT COUNT(*) FROM feedback").fetchone() == (0,)


def test_opening_a_store_purges_what_expired(tmp_path: Path) -> None:
    path = feedback_path(tmp_path)
    with FeedbackStore(path, retention_days=7) as store:
        store.record_completion("old", "acme", "m", CHAT, "a", now=time.time() - 8 * DAY)
    with FeedbackStore(path, retention_days=7) as store:
        assert store.rows("acme") == []


def test_record_completion_purges_at_most_hourly(tmp_path: Path) -> None:
    t0 = time.time() + 2 * DAY  # past the purge the open did, so the first record purges
    with FeedbackStore(feedback_path(tmp_path), retention_days=1) as store:
        store.record_completion("expired", "acme", "m", CHAT, "a", now=t0 - 2 * DAY)
        store.record_completion("trigger", "acme", "m", CHAT, "b", now=t0)
        assert store.get("expired", "acme") is None
        store.record_completion("stale", "acme", "m", CHAT, "c", now=t0 - 2 * DAY)
        store.record_completion("soon", "acme", "m", CHAT, "d", now=t0 + 59 * 60)
        assert store.get("stale", "acme") is not None
        store.record_completion("later", "acme", "m", CHAT, "e", now=t0 + 61 * 60)
        assert store.get("stale", "acme") is None


def test_expired_completion_takes_no_feedback(tmp_path: Path) -> None:
    with FeedbackStore(feedback_path(tmp_path), retention_days=1) as store:
        store.record_completion("old", "acme", "m", CHAT, "a", now=time.time() - 2 * DAY)
        store.purge_expired()
        with pytest.raises(FeedbackError, match="in the last 1 days"):
            store.add_feedback("old", "acme", 1)


@pytest.mark.parametrize("retention_days", [0.0, -1.0, float("inf"), float("nan")])
def test_retention_that_is_not_a_positive_number_of_days_is_refused(tmp_path: Path, retention_days: float) -> None:
    with pytest.raises(LoraforgeError, match="must be a positive number of days"):
        FeedbackStore(feedback_path(tmp_path), retention_days=retention_days)
    assert not feedback_path(tmp_path).exists()


# --- the DPO export ------------------------------------------------------------------------------


def test_export_takes_the_edit_as_chosen_and_the_original_as_rejected(store: FeedbackStore, tmp_path: Path) -> None:
    store.record_completion("c1", "acme", "m", CHAT, "Lyon.")
    store.add_feedback("c1", "acme", -1, edited="Paris.")
    report = store.export_dpo("acme", tmp_path / "pairs.jsonl")
    assert _read_jsonl(tmp_path / "pairs.jsonl") == [{"prompt": CHAT, "chosen": "Paris.", "rejected": "Lyon."}]
    assert (report.pairs, report.edited_pairs, report.rated_pairs) == (1, 1, 0)


def test_export_pairs_the_upvoted_over_the_downvoted_answer_of_one_prompt(store: FeedbackStore, tmp_path: Path) -> None:
    store.record_completion("up", "acme", "m", "Once upon", " a time there was a fox.")
    store.record_completion("down", "acme", "m", "Once upon", " the end.")
    store.add_feedback("down", "acme", -1)
    store.add_feedback("up", "acme", 1)
    report = store.export_dpo("acme", tmp_path / "pairs.jsonl")
    pair = {"prompt": "Once upon", "chosen": " a time there was a fox.", "rejected": " the end."}
    assert _read_jsonl(tmp_path / "pairs.jsonl") == [pair]
    assert (report.rated_pairs, report.skipped) == (1, {})


def test_export_skips_identical_chosen_and_rejected(store: FeedbackStore, tmp_path: Path) -> None:
    store.record_completion("same-edit", "acme", "m", CHAT, "Paris.")
    store.add_feedback("same-edit", "acme", -1, edited="Paris.\n")
    store.record_completion("a", "acme", "m", "Hi", "Hello")
    store.record_completion("b", "acme", "m", "Hi", "Hello")
    store.add_feedback("a", "acme", 1)
    store.add_feedback("b", "acme", -1)
    report = store.export_dpo("acme", tmp_path / "pairs.jsonl")
    assert (tmp_path / "pairs.jsonl").read_text() == ""
    assert (report.pairs, report.skipped) == (0, {"identical": 2})


def test_export_counts_votes_with_no_opposite_vote_as_skipped(store: FeedbackStore, tmp_path: Path) -> None:
    store.record_completion("a", "acme", "m", "Hi", "Hello")
    store.record_completion("b", "acme", "m", "Bye", "Later")
    store.add_feedback("a", "acme", 1)
    store.add_feedback("b", "acme", -1)
    report = store.export_dpo("acme", tmp_path / "pairs.jsonl")
    assert report.skipped == {"upvoted_without_downvoted": 1, "downvoted_without_upvoted": 1}


def test_export_uses_each_rated_answer_without_pairing_all_combinations(store: FeedbackStore, tmp_path: Path) -> None:
    for i, rating in enumerate([1, 1, 1, -1]):
        store.record_completion(f"c{i}", "acme", "m", CHAT, f"answer {i}")
        store.add_feedback(f"c{i}", "acme", rating)
    report = store.export_dpo("acme", tmp_path / "pairs.jsonl")
    pairs = _read_jsonl(tmp_path / "pairs.jsonl")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("answer 0", "answer 3"),
        ("answer 1", "answer 3"),
        ("answer 2", "answer 3"),
    ]
    assert report.rated_pairs == 3


def test_export_holds_only_the_tenants_rows(store: FeedbackStore, tmp_path: Path) -> None:
    store.record_completion("mine", "acme", "m", CHAT, "Lyon.")
    store.add_feedback("mine", "acme", -1, edited="Paris.")
    store.record_completion("theirs", "beta", "m", CHAT, "Marseille.")
    store.add_feedback("theirs", "beta", -1, edited="Secret beta answer.")
    store.export_dpo("acme", tmp_path / "acme.jsonl")
    text = (tmp_path / "acme.jsonl").read_text()
    assert "Paris." in text and "Marseille." not in text and "Secret beta answer." not in text


def test_failed_export_leaves_the_old_file_and_no_partial_one(store: FeedbackStore, tmp_path: Path) -> None:
    store.record_completion("good", "acme", "m", CHAT, "Lyon.")
    store.add_feedback("good", "acme", -1, edited="Paris.")
    store.record_completion("damaged", "acme", "m", CHAT, "x")
    store.add_feedback("damaged", "acme", 1)
    raw = sqlite3.connect(store.path)
    with raw:
        raw.execute("UPDATE completions SET prompt = '{not json' WHERE id = 'damaged'")
    raw.close()
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    (out_dir / "pairs.jsonl").write_text("previous export\n")
    with pytest.raises(LoraforgeError, match="'damaged' has a prompt that is not JSON"):
        store.export_dpo("acme", out_dir / "pairs.jsonl")
    assert [p.name for p in out_dir.iterdir()] == ["pairs.jsonl"]
    assert (out_dir / "pairs.jsonl").read_text() == "previous export\n"


def test_export_onto_a_directory_is_a_clear_error(store: FeedbackStore, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(LoraforgeError, match="cannot write the export"):
        store.export_dpo("acme", tmp_path / "taken")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".taken")] == []


# --- the CLI -------------------------------------------------------------------------------------


def _served(state_dir: Path, retention_days: float = 30.0) -> None:
    with FeedbackStore(feedback_path(state_dir), retention_days=retention_days) as store:
        store.record_completion("c1", "acme", "m", CHAT, "Lyon.")
        store.add_feedback("c1", "acme", -1, edited="Paris.")
        store.record_completion("c2", "beta", "m", "Hi", "Hello")


def test_cli_export_writes_pairs_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _served(tmp_path / "state")
    out = tmp_path / "pairs.jsonl"
    argv = ["feedback", "export", "--tenant", "acme", "--format", "dpo", "--state-dir", str(tmp_path / "state")]
    assert main([*argv, str(out)]) == 0
    assert _read_jsonl(out) == [{"prompt": CHAT, "chosen": "Paris.", "rejected": "Lyon."}]
    assert "wrote 1 pairs" in capsys.readouterr().out


def test_cli_export_unknown_format_exits_2_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _served(tmp_path / "state")
    argv = ["feedback", "export", "--tenant", "acme", "--format", "kto", "--state-dir", str(tmp_path / "state")]
    assert main([*argv, str(tmp_path / "pairs.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--format 'kto': unknown export format; use one of: dpo" in err and "Traceback" not in err
    assert not (tmp_path / "pairs.jsonl").exists()


def test_cli_without_a_store_exits_2_and_creates_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["feedback", "stats", "--state-dir", str(tmp_path / "empty")]) == 2
    assert "pass the --state-dir the server ran with" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_cli_stats_counts_per_tenant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _served(tmp_path / "state")
    assert main(["feedback", "stats", "--json", "--state-dir", str(tmp_path / "state")]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"tenant": "acme", "completions": 1, "upvoted": 0, "downvoted": 1, "edited": 1},
        {"tenant": "beta", "completions": 1, "upvoted": 0, "downvoted": 0, "edited": 0},
    ]


def test_cli_keeps_the_retention_the_server_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    with FeedbackStore(feedback_path(state), retention_days=90) as server:
        server.record_completion("aged", "acme", "m", CHAT, "a", now=time.time() - 40 * DAY)
    assert main(["feedback", "stats", "--json", "--tenant", "acme", "--state-dir", str(state)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["completions"] == 1
