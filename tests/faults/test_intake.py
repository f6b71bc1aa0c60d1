"""The intake file, broken on purpose: a poisoned row, an older table, a deleted file, a planted
symlink, another kernel folding rows that are not its own.

A cell's `trigger()` commits its run into `runs.db-intake`; the store folds it into `runs` (in
the writer's next transaction, before any read, and at open). Whatever the intake holds, the
next open folds what is a run's row and leaves out, with a warning, what is not; a run is never
folded over its own later state, and never run by a kernel that doesn't own it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from _helpers import ids_in_files, read_rows

from nbtasks import Engine, RunStatus, StoreError
from nbtasks._runstate import RUN_COLUMNS, RunState


def _queued_row(run_id: str, payload: str) -> tuple[Any, ...]:
    """A new run's row, as a cell's trigger() would have committed it into the intake."""
    run = RunState(run_id, "echo", payload, 1_700_000_000.0)
    run.owner = "eng_dead"
    return run.row()


def _plant(db: Path, rows: list[tuple[Any, ...]], columns: tuple[str, ...] = RUN_COLUMNS) -> None:
    """Rows written into the intake file behind the engine's back (the engine is closed)."""
    con = sqlite3.connect(f"{db}-intake", isolation_level=None)
    try:
        con.executemany(f"INSERT INTO intake ({', '.join(columns)}) "
                        f"VALUES ({', '.join('?' * len(columns))})", rows)
    finally:
        con.close()


def _echo(eng: Engine, ran: list[Any]) -> Any:
    @eng.task(id="echo", retry=None)
    def echo(payload: Any, ctx: Any) -> Any:
        ran.append(payload)
        return payload

    return echo


@pytest.mark.timeout(60)
def test_a_poisoned_intake_row_is_left_out_and_the_rest_is_folded_and_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "runs.db"
    Engine(store=str(db)).close()
    good = _queued_row("run_good", '{"n":1}')
    no_id = (None, *good[1:])
    blob_task = list(_queued_row("run_blob_task", '{"n":2}'))
    blob_task[1] = b"\x00not text"
    text_time = list(_queued_row("run_text_time", '{"n":3}'))
    text_time[RUN_COLUMNS.index("created_at")] = "yesterday"
    _plant(db, [no_id, tuple(blob_task), good, tuple(text_time)])

    ran: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="nbtasks"), Engine(store=str(db)) as eng:
        _echo(eng, ran)
        assert eng.wait_results(["run_good"], timeout=10)[0].output == {"n": 1}
    assert ran == [{"n": 1}]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "left out 3 intake rows" in said and "run_blob_task" in said, said
    assert "run_text_time" in said and "None" in said
    # After reopening: the good run is in `runs`, final; the intake holds nothing.
    assert read_rows(db, "SELECT id, status FROM runs") == [("run_good", "COMPLETED")]
    assert read_rows(f"{db}-intake", "SELECT COUNT(*) FROM intake") == [(0,)]


@pytest.mark.timeout(60)
def test_an_intake_table_of_an_older_version_is_folded_then_made_anew(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    Engine(store=str(db)).close()
    read_rows(f"{db}-intake", "DROP TABLE intake")
    old = RUN_COLUMNS[:-3]  # a version before the last columns were added
    read_rows(f"{db}-intake", f"CREATE TABLE intake ({', '.join(old)})")
    _plant(db, [_queued_row("run_old", '{"n":7}')[:len(old)]], old)

    ran: list[Any] = []
    with Engine(store=str(db)) as eng:
        echo = _echo(eng, ran)
        assert eng.wait_results(["run_old"], timeout=10)[0].output == {"n": 7}
        assert echo.trigger({"n": 8}).wait(timeout=10).output == {"n": 8}  # the new table
    assert sorted(ran, key=str) == [{"n": 7}, {"n": 8}]
    con = sqlite3.connect(f"{db}-intake")
    try:
        assert [r[1] for r in con.execute("PRAGMA table_info(intake)")] == list(RUN_COLUMNS)
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_a_deleted_intake_stops_trigger_naming_it_and_a_restart_makes_it_again(
        tmp_path: Path) -> None:
    db = tmp_path / ".nbtasks" / "runs.db"
    ran: list[Any] = []
    with Engine(store=str(db)) as eng:
        echo = _echo(eng, ran)
        first = echo.trigger(1)
        assert first.wait(timeout=10).output == 1
        for suffix in ("-intake", "-intake-wal", "-intake-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreError, match=r"runs\.db-intake.*deleted"):
            echo.trigger(2)
        assert not Path(f"{db}-intake").exists()  # never written into the void, nor made again
        # Batches commit straight into `runs`, which is still there.
        assert [r.output for r in echo.batch_trigger([3, 4]).wait(timeout=10)] == [3, 4]
    with Engine(store=str(db)) as eng:
        echo = _echo(eng, ran)
        assert echo.trigger(5).wait(timeout=10).output == 5
    assert sorted(ran) == [1, 3, 4, 5]  # a batch's two runs may run in either order
    assert sorted(r[0] for r in read_rows(db, "SELECT payload FROM runs")) == ["1", "3", "4", "5"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["-intake", "-intake-wal", "-intake-shm"])
def test_a_symlink_planted_at_an_intake_file_is_refused(tmp_path: Path, side: str) -> None:
    db = tmp_path / ".nbtasks" / "runs.db"
    Engine(store=str(db)).close()
    Path(f"{db}{side}").unlink(missing_ok=True)
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    Path(f"{db}{side}").symlink_to(target)
    with pytest.raises(StoreError, match=rf"runs\.db{side}.*symlink"):
        Engine(store=str(db))
    assert target.read_bytes() == b"precious"


@pytest.mark.timeout(60)
def test_a_second_kernel_folds_anothers_intake_without_running_or_overwriting_it(
        tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    gate = threading.Event()
    ran: list[Any] = []
    first = Engine(store=str(db))
    try:
        @first.task(id="echo", retry=None)
        def echo(payload: Any, ctx: Any) -> Any:
            gate.wait(10)
            ran.append(payload)
            return payload

        # The writer can't fold while the store's file is locked: the runs stay in the intake.
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            handles = [echo.trigger(i) for i in range(20)]
            assert ids_in_files(db) >= {h.id for h in handles}
            assert not read_rows(db, "SELECT id FROM runs WHERE task_id = 'echo'")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with Engine(store=str(db)) as second:  # its open folds the first kernel's intake rows
            second.task(id="echo", run=lambda p, ctx: ran.append(("second", p)))
            assert {r.id for r in second.runs.list(task_id="echo", limit=100)} == {
                h.id for h in handles}
            gate.set()
            results = first.wait_results([h.id for h in handles], timeout=30)
            assert [r.output for r in results] == list(range(20))
        assert sorted(ran) == list(range(20))  # each once, by the kernel that owns it
    finally:
        gate.set()
        first.close()
    stored = read_rows(db, "SELECT status, COUNT(*) FROM runs WHERE task_id = 'echo' GROUP BY status")
    assert stored == [(RunStatus.COMPLETED.value, 20)]  # the fold never overwrote a later state
    assert read_rows(f"{db}-intake", "SELECT COUNT(*) FROM intake") == [(0,)]


@pytest.mark.timeout(120)
def test_two_kernels_triggering_into_one_intake_each_run_their_own_once(tmp_path: Path) -> None:
    """Both write the same intake file and delete their own folded rows from it (by rowid and
    id): neither deletes the other's rows nor folds a row over the other's later state."""
    db = tmp_path / "runs.db"
    ran: dict[str, list[Any]] = {"a": [], "b": []}
    engines = {name: Engine(store=str(db)) for name in ran}
    try:
        tasks = {name: eng.task(id=f"work-{name}", run=lambda p, ctx, name=name: ran[name].append(p))
                 for name, eng in engines.items()}
        ids: dict[str, list[str]] = {"a": [], "b": []}

        def loop(name: str) -> None:
            ids[name] = [tasks[name].trigger(i).id for i in range(1500)]  # past FORGET_EVERY

        threads = [threading.Thread(target=loop, args=(name,)) for name in ran]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for name, eng in engines.items():
            assert all(r.ok for r in eng.wait_results(ids[name], timeout=60))
    finally:
        for eng in engines.values():
            eng.close()
    assert sorted(ran["a"]) == sorted(ran["b"]) == list(range(1500))
    rows = read_rows(db, "SELECT task_id, status, COUNT(*) FROM runs GROUP BY task_id, status")
    assert rows == [("work-a", "COMPLETED", 1500), ("work-b", "COMPLETED", 1500)]
    assert read_rows(f"{db}-intake", "SELECT COUNT(*) FROM intake") == [(0,)]


@pytest.mark.timeout(60)
def test_a_read_waits_for_a_slow_fold_in_flight_and_sees_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded machine the writer's fold can take longer than a read waits for the lock:
    the read then waits for that fold's commit instead of reading without the run."""
    from nbtasks.stores import sqlite as store_module

    folding = threading.Event()
    real_apply = store_module._apply

    def slow_apply(conn: sqlite3.Connection, batch: Any, fold: list[Any]) -> Any:
        if fold and threading.current_thread().name == "nbtasks-writer":
            folding.set()
            threading.Event().wait(0.5)  # a slow commit, the rows taken and not yet written
        return real_apply(conn, batch, fold)

    monkeypatch.setattr(store_module, "_apply", slow_apply)
    db = tmp_path / "runs.db"
    with Engine(store=str(db)) as eng:
        gate = threading.Event()
        work = eng.task(id="work", run=lambda p, ctx: gate.wait(10))
        eng.store.select("SELECT 1")  # this thread's reader connection, made before the fold
        handle = work.trigger(1)
        assert folding.wait(10)  # the writer holds the row in its open transaction
        _, rows = eng.store.select("SELECT status FROM runs WHERE id = ?", (handle.id,))
        assert rows in ([("QUEUED",)], [("EXECUTING",)])
        gate.set()
        assert handle.wait(timeout=10).ok


@pytest.mark.timeout(60)
def test_an_intake_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    Engine(store=str(db)).close()
    for suffix in ("-intake-wal", "-intake-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    Path(f"{db}-intake").write_bytes(b"not a database, just text " * 100)
    with pytest.raises(StoreError, match=r"runs\.db-intake: file is not a database"):
        Engine(store=str(db))
    assert read_rows(db, "SELECT COUNT(*) FROM runs") == [(0,)]  # the store itself untouched
