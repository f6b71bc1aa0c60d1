"""A stored run is updated with only the columns that changed since its last committed row.

SQLite's cost for an update grows with the columns it names, so the writer hands the store
each run's last committed row beside its new one (`WriteBatch.previous`), and the SQLite store
names only what differs. These tests read the file afresh: a column that changed is always
there, one that did not is left alone, an unknown previous row means a whole update, and a row
the store refused is never taken as the one on disk. An attempt's row, likewise, names only the
columns it sets, and replaces the attempt's earlier row whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks._runstate import ATTEMPT_COLUMNS, RUN_COLUMNS, AttemptState, RunState, new_id
from nbtasks.stores._base import WriteBatch
from nbtasks.stores.sqlite import SQLiteStore


def _row_on_disk(db: Path, run_id: str) -> dict[str, Any]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row is not None else {}
    finally:
        con.close()


def _edit_behind(db: Path, sql: str, params: tuple[Any, ...]) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(sql, params)
    finally:
        con.close()


def _retag_behind(db: Path, run_id: str) -> None:
    """Somebody else changes a column a run's end does not change: its tags."""
    _edit_behind(db, "UPDATE runs SET tags = ? WHERE id = ?", ('["edited"]', run_id))


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteStore(str(tmp_path / ".nbtasks" / "runs.db"))
    s.open()
    try:
        yield s
    finally:
        s.close()


def _queued_then_done(store: SQLiteStore) -> tuple[RunState, tuple[Any, ...], tuple[Any, ...]]:
    """A run stored QUEUED, and its row once COMPLETED (not written yet)."""
    run = RunState(new_id("run_"), "t", "1", 1000.0)
    run.tags = ["a"]
    first = run.row()
    store.write(WriteBatch(runs=[first], fresh=True))
    run.status, run.attempt_count, run.output_json = RunStatus.COMPLETED, 1, "2"
    run.started_at, run.finished_at, run.updated_at = 1001.0, 1002.0, 1002.0
    return run, first, run.row()


@pytest.mark.timeout(30)
def test_an_update_writes_what_changed_and_leaves_the_rest(store: SQLiteStore) -> None:
    run, first, done = _queued_then_done(store)
    db = Path(store.path)
    _retag_behind(db, run.id)
    store.write(WriteBatch(updates=[done], previous=[first]))
    row = _row_on_disk(db, run.id)
    assert (row["status"], row["attempt_count"], row["output"]) == ("COMPLETED", 1, "2")
    assert (row["started_at"], row["finished_at"], row["updated_at"]) == (1001.0, 1002.0, 1002.0)
    assert row["tags"] == '["edited"]'  # not named: not rewritten


@pytest.mark.timeout(30)
def test_an_update_without_its_previous_row_writes_every_column(store: SQLiteStore) -> None:
    run, _, done = _queued_then_done(store)
    db = Path(store.path)
    for previous in ([None], []):  # unknown, or left short: the same
        _retag_behind(db, run.id)
        store.write(WriteBatch(updates=[done], previous=previous))
        assert _row_on_disk(db, run.id)["tags"] == '["a"]'


@pytest.mark.timeout(30)
def test_a_missing_row_is_written_whole_even_when_nothing_changed(store: SQLiteStore) -> None:
    run, first, _ = _queued_then_done(store)
    db = Path(store.path)
    _edit_behind(db, "DELETE FROM runs WHERE id = ?", (run.id,))
    store.write(WriteBatch(updates=[first], previous=[first]))
    row = _row_on_disk(db, run.id)
    assert tuple(row[c] for c in RUN_COLUMNS) == first


@pytest.mark.timeout(30)
def test_runs_that_change_different_columns_in_one_commit(store: SQLiteStore) -> None:
    a, a_first, a_done = _queued_then_done(store)
    b, b_first, _ = _queued_then_done(store)
    c, c_first, c_done = _queued_then_done(store)
    b.metadata = {"k": 1}
    b.priority = 5.0
    b_new = b.row()
    store.write(WriteBatch(updates=[a_done, b_new, c_done], previous=[a_first, b_first, c_first]))
    db = Path(store.path)
    for run, row in ((a, a_done), (b, b_new), (c, c_done)):
        assert tuple(_row_on_disk(db, run.id)[col] for col in RUN_COLUMNS) == row


@pytest.mark.timeout(60)
def test_a_runs_whole_life_is_on_disk_column_by_column(db_path: Path) -> None:
    """Delayed, tagged, retried, with metadata set while it runs: every change of its life
    reaches the file, however the writer split its updates."""
    attempts: list[int] = []

    async def flaky(payload: int, ctx: Any) -> int:
        attempts.append(ctx.attempt.number)
        nbtasks.metadata.set("attempt", ctx.attempt.number)
        await asyncio.sleep(0)
        if ctx.attempt.number == 1:
            raise RuntimeError("first attempt fails")
        return payload * 2

    with Engine(store=str(db_path)) as eng:
        task = eng.task(id="flaky", run=flaky,
                        retry={"max_attempts": 2, "min_timeout_in_ms": 10, "max_timeout_in_ms": 10})
        handle = task.trigger(21, delay=0.05, tags=["t1"], ttl=60, max_duration=30)
        assert handle.wait(timeout=30).output == 42
    row = _row_on_disk(db_path, handle.id)
    assert row["status"] == "COMPLETED" and row["output"] == "42"
    assert row["attempt_count"] == 2 and attempts == [1, 2]
    assert json.loads(row["metadata"]) == {"attempt": 2}
    assert json.loads(row["tags"]) == ["t1"]
    assert row["started_at"] is not None and row["finished_at"] >= row["started_at"]
    assert row["queued_at"] >= row["created_at"] + 0.05  # queued once its delay ran out
    assert row["ttl"] == 60 and row["max_duration"] == 30
    assert row["error"] is None  # the first attempt's error is the attempt's, not the run's


BAD = os.fsdecode(b"report-\xff.csv")  # a lone surrogate: text SQLite can't encode


@pytest.mark.timeout(60)
def test_a_refused_row_is_not_taken_for_the_one_on_disk(db_path: Path) -> None:
    """A running run's row is refused (poisoned text put straight into its state). The engine
    fails the run and writes it again; a change that rode only in the refused row (its tags
    here) must still reach the file, so the next update can't be worked out from that row."""
    with Engine(store=str(db_path)) as eng:
        async def body(payload: int, ctx: Any) -> None:
            run = eng.scheduler.active[ctx.run.id]
            run.tags = ["changed"]
            run.machine = BAD  # a raw text column, never set this way by the engine itself
            eng.writer.mark(run)
            eng.writer.hurry()
            await asyncio.Event().wait()  # until the refusal fails (and cancels) the run

        task = eng.task(id="poisoned", run=body, retry=None)
        result = task.trigger(1).wait(timeout=30)
        assert not result.ok
    row = _row_on_disk(db_path, result.id)
    assert row["status"] == RunStatus.FAILED.value
    assert "refused" in json.loads(row["error"])["message"]
    assert json.loads(row["tags"]) == ["changed"]
    assert row["machine"] == "report-\\udcff.csv"  # written escaped once refused


@pytest.mark.timeout(30)
def test_an_attempts_row_names_what_it_sets_and_replaces_the_earlier_row_whole(
        store: SQLiteStore) -> None:
    run, _, _ = _queued_then_done(store)
    failing = AttemptState(1, 1001.0, "kernel", run.queue)
    failing.finished_at, failing.status = 1002.0, "FAILED"
    failing.error = {"type": "ValueError", "message": "bad", "traceback": ""}
    store.write(WriteBatch(attempts=[failing.row(run.id)]))
    # The same attempt written again without an error (its error columns left out of the
    # statement): nothing of the earlier row may survive.
    again = AttemptState(1, 1001.0, "kernel", run.queue)
    again.finished_at, again.status = 1003.0, "COMPLETED"
    started = AttemptState(2, 1004.0, "micro", run.queue)  # no end yet: fewer columns still
    store.write(WriteBatch(attempts=[again.row(run.id), started.row(run.id)]))
    con = sqlite3.connect(store.path)
    try:
        rows = con.execute(f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE run_id = ? "
                           "ORDER BY number", (run.id,)).fetchall()
    finally:
        con.close()
    assert rows == [again.row(run.id), started.row(run.id)]
    assert rows[0][7:] == (None, None, None)
