"""The schema's version (PRAGMA user_version) and the path from one version to the next."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from nbtasks import Engine, RunStatus
from nbtasks.stores.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore


def _user_version(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


def test_migrations_run_one_version_after_another() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


def test_a_new_file_has_the_current_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    store.open()
    store.close()
    assert _user_version(tmp_path / "runs.db") == SCHEMA_VERSION == 5


def _v1_file(db: Path) -> None:
    """A store as the first release wrote it: schema v1 and a finished run, a live schedule."""
    con = sqlite3.connect(db, isolation_level=None)
    for stmt in MIGRATIONS[1]:
        con.execute(stmt)
    con.execute("PRAGMA user_version = 1")
    con.execute(
        "INSERT INTO runs (id, task_id, status, payload, output, attempt_count, created_at, "
        "started_at, finished_at, updated_at, queued_at, queue, machine, owner, seq) "
        "VALUES ('run_old', 'old-task', 'COMPLETED', '{\"a\":1}', '42', 1, 1.0, 2.0, 3.0, 3.0, "
        "1.0, 'task/old-task', 'kernel', 'eng_gone', 1)")
    con.execute("INSERT INTO attempts (run_id, number, status, started_at, finished_at, machine, "
                "queue) VALUES ('run_old', 1, 'COMPLETED', 2.0, 3.0, 'kernel', 'task/old-task')")
    con.execute("INSERT INTO schedules (id, task_id, type, cron, timezone, deduplication_key, "
                "active, created_at) VALUES ('sched_old', 'old-task', 'IMPERATIVE', '0 * * * *', "
                "'UTC', 'k', 1, 1.0)")
    con.close()


def test_a_v1_file_is_migrated_and_keeps_its_history(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    _v1_file(db)
    with Engine(store=str(db)) as eng:
        assert _user_version(db) == SCHEMA_VERSION
        run = eng.runs.retrieve("run_old")
        assert run.status is RunStatus.COMPLETED and run.output == 42 and run.payload == {"a": 1}
        assert [a.number for a in run.attempts] == [1]
        assert len(eng.runs.attempts_dataframe()) == 1
        (sched,) = eng.schedules.list()
        assert (sched.id, sched.cron, sched.updated_at) == ("sched_old", "0 * * * *", None)
        # New writes use the new columns.
        eng.task(id="new", run=lambda p, ctx: p).trigger(1).wait(timeout=10)
    with closing(sqlite3.connect(db)) as con:
        columns = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
    assert {"recovery", "replayed_from"} <= columns


def _v3_file(db: Path, runs: int, version: int = 3) -> None:
    """A store as `version` wrote it (3: no index on finished_at), holding `runs` finished
    runs."""
    con = sqlite3.connect(db, isolation_level=None)
    for v in range(1, version + 1):
        for stmt in MIGRATIONS[v]:
            con.execute(stmt)
    con.execute(f"PRAGMA user_version = {version}")
    con.executemany(
        "INSERT INTO runs (id, task_id, status, attempt_count, created_at, started_at, "
        "finished_at, updated_at, queue, machine, owner, seq) VALUES (?, 'old-task', "
        "'COMPLETED', 1, ?, ?, ?, ?, 'task/old-task', 'kernel', 'eng_gone', ?)",
        [(f"run_{i:05d}", 1000.0 + i, 1000.5 + i, 1001.0 + i, 1001.0 + i, i)
         for i in range(runs)])
    con.close()


def _plan(db: Path, sql: str, *params: float) -> str:
    con = sqlite3.connect(db)
    try:
        return " ".join(r[-1] for r in con.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        con.close()


def test_a_v3_file_gets_the_finished_at_index_and_keeps_its_runs(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    _v3_file(db, 500)
    window = "SELECT COUNT(*) FROM runs WHERE finished_at >= ? AND created_at < ?"
    assert "runs_finished" not in _plan(db, window, 1400.0, 1400.0)  # v3: no such index
    with Engine(store=str(db)) as eng:
        assert _user_version(db) == SCHEMA_VERSION
        assert eng.runs.count() == 500
        assert eng.runs.retrieve("run_00499").status is RunStatus.COMPLETED
    # the timeline's "ended inside the window" scan and the summary's "finished in the last
    # minute" now read a range of the new index, not the whole history
    assert "INDEX runs_finished (finished_at>?)" in _plan(db, window, 1400.0, 1400.0)
    assert "runs_finished" in _plan(db, "SELECT COUNT(*) FROM runs WHERE created_at >= ? AND "
                                    "finished_at >= ?", 0.0, 1400.0)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM runs INDEXED BY runs_finished "
                       "WHERE finished_at >= 1400").fetchone()[0] == 101
    con.close()


def test_a_v4_file_gets_the_sort_indexes_and_queued_runs_stay_out_of_them(
        tmp_path: Path) -> None:
    """Version 5 adds the dashboard's "started" and "duration" sort indexes, partial so that a
    queued run's insert writes neither: the migrated runs are in them, a new queued run is not
    until it starts, and a sorted page becomes an index walk."""
    from nbtasks.notebook.queries import SORT_KEYS
    from nbtasks.stores.sqlite import SORTED_RUNS
    db = tmp_path / "runs.db"
    _v3_file(db, 300, version=4)
    sort = f"SELECT id FROM runs WHERE {SORTED_RUNS} ORDER BY {SORT_KEYS['duration']} DESC, " \
           "id DESC LIMIT 20"
    assert "runs_sort_duration" not in _plan(db, sort)  # v4: a scan and a sort
    running, gate = threading.Event(), threading.Event()

    def body(payload: int, ctx: object) -> bool:
        running.set()
        return gate.wait(10)

    with Engine(store=str(db)) as eng:
        assert _user_version(db) == SCHEMA_VERSION == 5
        assert eng.runs.count() == 300
        slow = eng.task(id="slow", run=body, queue={"concurrency_limit": 1})
        first, second = slow.trigger(1), slow.trigger(2)
        assert running.wait(10)
        eng.runs._fresh()  # the first run's start is committed
        con = sqlite3.connect(db)
        held = {name: {r[0] for r in con.execute(
            f"SELECT id FROM runs INDEXED BY {name} WHERE {SORTED_RUNS}")}
            for name in ("runs_sort_started", "runs_sort_duration")}
        con.close()
        assert held["runs_sort_started"] == held["runs_sort_duration"]
        assert len(held["runs_sort_started"] - {first.id}) == 300  # the migrated runs
        assert second.id not in held["runs_sort_started"]  # queued: never written there
        gate.set()
        second.wait(timeout=10)
    assert "runs_sort_duration" in _plan(db, sort) and "TEMP B-TREE" not in _plan(db, sort)
    con = sqlite3.connect(db)
    assert con.execute(f"SELECT COUNT(*) FROM runs INDEXED BY runs_sort_started "
                       f"WHERE {SORTED_RUNS}").fetchone()[0] == 302
    con.close()


def test_a_file_from_a_newer_nbtasks_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(RuntimeError, match="Upgrade nbtasks"):
        SQLiteStore(db).open()
    assert _user_version(db) == SCHEMA_VERSION + 1  # untouched


def test_a_failed_migration_changes_nothing(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runs.db"
    _v1_file(db)
    monkeypatch.setitem(MIGRATIONS, 2, [*MIGRATIONS[2], "THIS IS NOT SQL"])
    with pytest.raises(sqlite3.OperationalError):
        SQLiteStore(db).open()
    assert _user_version(db) == 1
    with closing(sqlite3.connect(db)) as con:
        columns = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
    assert "recovery" not in columns  # the whole step rolled back
