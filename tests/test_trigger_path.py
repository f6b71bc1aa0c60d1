"""The cheap trigger and wait paths keep the durability contract, checked in the file itself.

- a `trigger()` / `trigger_async()` returns only once its row is in the file (another
  connection sees it the moment the call returns);
- `await asyncio.gather(*handles)` sends the awaits of one loop turn to the engine as one call,
  and still no waiter hears of a run before its final row is committed: the writer is slowed,
  so an answer sent early would find the file behind it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from _helpers import row_in_files

from nbtasks import Engine, RunStatus
from nbtasks.stores._base import WriteBatch
from nbtasks.stores.sqlite import SQLiteStore


class SlowWriter(SQLiteStore):
    """Each of the engine writer's commits takes 20 ms longer: an early answer would show."""

    def write(self, batch: WriteBatch) -> None:
        if any(row[2] != "QUEUED" for row in batch.runs):  # not a caller's own new rows
            time.sleep(0.02)
        super().write(batch)


def _status_in_file(db: Path, run_id: str) -> str | None:
    row = row_in_files(db, run_id)
    return None if row is None else str(row[0])


@pytest.mark.timeout(60)
def test_a_trigger_returns_only_once_its_row_is_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with Engine(store=str(db)) as eng:
        task = eng.task(id="noop", run=lambda p, ctx: p)
        for i in range(30):
            handle = task.trigger(i)
            assert _status_in_file(db, handle.id) is not None

        async def go() -> list[str]:
            handles = await asyncio.gather(*(task.trigger_async(i) for i in range(30)))
            return [h.id for h in handles]

        ids = asyncio.run(go())
        assert all(_status_in_file(db, run_id) is not None for run_id in ids)
        assert all(r.ok for r in eng.wait_results(ids, timeout=30))


@pytest.mark.timeout(60)
def test_gathered_awaits_share_one_trip_and_hear_only_committed_results(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with Engine(store=SlowWriter(db)) as eng:
        gate = asyncio.Event()  # bound to the engine loop, where the bodies wait on it

        async def double(p: int, ctx: Any) -> int:
            await gate.wait()  # still running when the awaits are made
            return p * 2

        task = eng.task(id="double", run=double)
        trips: list[int] = []
        deliver = eng._deliver

        def counted(run_ids: list[str], *rest: Any) -> None:
            trips.append(len(run_ids))
            deliver(run_ids, *rest)

        eng._deliver = counted  # type: ignore[method-assign]
        on_disk: dict[str, str | None] = {}

        async def go() -> list[Any]:
            handles = [task.trigger(i) for i in range(40)]
            futures = [asyncio.ensure_future(h) for h in handles]
            for h, fut in zip(handles, futures, strict=True):
                # read the file the moment the answer arrives, before anything else runs
                fut.add_done_callback(lambda _, run_id=h.id: on_disk.__setitem__(
                    run_id, _status_in_file(db, run_id)))
            await asyncio.sleep(0)  # every handle awaited once, none could be final yet
            eng.runtime.loop.call_soon_threadsafe(gate.set)
            return await asyncio.gather(*futures)

        results = asyncio.run(go())
    assert [r.output for r in results] == [i * 2 for i in range(40)]
    assert trips == [40]  # one call to the engine loop for the 40 awaits of one turn
    assert set(on_disk.values()) == {RunStatus.COMPLETED.value}


@pytest.mark.timeout(60)
def test_waiters_on_a_trigger_loops_runs_hear_only_committed_results(tmp_path: Path) -> None:
    """A `trigger()` loop is taken as a stream: hand-overs linger up to 100 ms and the writer
    puts its progress off up to 200 ms. A wait still hears of a run only once its final row is
    in the file (the writer is slowed, so an early answer would find the file behind it)."""
    db = tmp_path / "runs.db"
    with Engine(store=SlowWriter(db)) as eng:
        eng.runtime.inbox.linger = 0.005  # 4 hand-overs in 5 ms are a stream: on any machine
        streaming: list[bool] = []

        async def quick(p: int, ctx: Any) -> int:
            streaming.append(eng.runtime.inbox.streaming())
            return p

        task = eng.task(id="quick", run=quick)
        handles = [task.trigger(i) for i in range(1500)]
        on_disk = {}
        for i in range(0, len(handles), 25):
            h = handles[i]
            assert h.wait(timeout=30).output == i
            on_disk[h.id] = _status_in_file(db, h.id)  # read the moment the answer arrived
    assert any(streaming), "the loop was never taken as a stream"
    assert set(on_disk.values()) == {RunStatus.COMPLETED.value}


@pytest.mark.timeout(60)
def test_gathered_awaits_on_unknown_and_closed_runs_raise_for_each(tmp_path: Path) -> None:
    from nbtasks import EngineError, RunNotFoundError
    from nbtasks._handles import RunHandle

    with Engine(store=str(tmp_path / "runs.db")) as eng:
        task = eng.task(id="echo", run=lambda p, ctx: p)
        good = task.trigger(1)
        ghost: RunHandle[Any] = RunHandle(eng, "run_doesnotexist000000000", "echo")

        async def go() -> list[Any]:
            return await asyncio.gather(good, ghost, return_exceptions=True)

        ok, missing = asyncio.run(go())
        assert ok.output == 1
        assert isinstance(missing, RunNotFoundError)
    late: RunHandle[Any] = RunHandle(eng, "run_doesnotexist000000001", "echo")

    async def after_close() -> Any:
        return await late

    with pytest.raises(EngineError, match="closed"):
        asyncio.run(after_close())


def _stored(db: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT * FROM runs ORDER BY id").fetchall()
    finally:
        con.close()


def test_a_fresh_row_is_stored_as_the_upsert_stores_it_and_never_overwrites(
        tmp_path: Path) -> None:
    """New runs are inserted naming only the columns they set (rows setting different columns,
    in any order, each with their own): same row, and a clash with a stored id is refused
    (nothing changed) where the upsert would have overwritten it."""
    from nbtasks._runstate import RunState

    runs = []
    for i, (tags, delay) in enumerate([([], None), (["a"], 5.0), ([], None), (["b"], 6.0),
                                       ([], None)]):
        run = RunState(f"run_{i:021d}", "echo", str(i), 1000.0 + i)
        run.tags, run.delay_until, run.owner, run.seq = tags, delay, "eng_x", i
        runs.append(run)
    stores = []
    for name, fresh in (("upsert.db", False), ("fresh.db", True)):
        store = SQLiteStore(tmp_path / name)
        store.open()
        store.write(WriteBatch(runs=[runs[0].row()], fresh=fresh))  # one row: its own statement
        store.write(WriteBatch(runs=[r.row() for r in runs[1:]], fresh=fresh))
        stores.append(store)
    assert _stored(tmp_path / "fresh.db") == _stored(tmp_path / "upsert.db")
    before = _stored(tmp_path / "fresh.db")
    clash = RunState(runs[1].id, "other", "99", 5.0)
    for rows in ([clash.row()], [clash.row(), RunState("run_new", "echo", "1", 6.0).row()]):
        with pytest.raises(sqlite3.IntegrityError):
            stores[1].write(WriteBatch(runs=rows, fresh=True))
        assert _stored(tmp_path / "fresh.db") == before
    for store in stores:
        store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("folded_elsewhere", [False, True])
def test_a_run_that_moved_on_before_its_fold_is_written_once_with_its_newer_state(
        tmp_path: Path, folded_elsewhere: bool) -> None:
    """An intake row whose run the same commit carries further (here: completed) goes into
    `runs` once, with the newer state. If another kernel's open already folded the intake row
    (the run is in `runs`, QUEUED), the newer state still wins: it is never dropped as a
    duplicate of the old one."""
    from nbtasks._runstate import RunState

    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    store.open()
    try:
        runs = [RunState(f"run_{i:021d}", "echo", str(i), 1000.0 + i) for i in range(3)]
        for run in runs:
            run.owner, run.seq = "eng_x", 1
            store.write(WriteBatch(runs=[run.row()], fresh=True, intake=True))
        if folded_elsewhere:  # what another kernel's fold at open writes for the first two
            con = sqlite3.connect(db, isolation_level=None)
            with con:
                for run in runs[:2]:
                    con.execute("INSERT INTO runs (id, task_id, status, payload, created_at) "
                                "VALUES (?, 'echo', 'QUEUED', ?, ?)",
                                (run.id, run.payload_json, run.created_at))
            con.close()
        for run in runs[:2]:
            run.status, run.attempt_count, run.output_json = RunStatus.COMPLETED, 1, '"done"'
            run.started_at = run.finished_at = run.updated_at = 2000.0
        store.write(WriteBatch(updates=[run.row() for run in runs[:2]]))
        rows = {r[0]: r for r in _stored(db)}
        assert sorted(rows) == [run.id for run in runs]
        for run in runs[:2]:
            assert rows[run.id][2:5] == ("COMPLETED", run.payload_json, '"done"')
        assert rows[runs[2].id][2] == "QUEUED"  # folded as it was
    finally:
        store.close()
