"""A second connection holds the write lock: nothing runs unrecorded, nothing is dropped.

While another process holds `BEGIN EXCLUSIVE`, a cell's `trigger()`, `batch_trigger()` and an
awaited `trigger_async()` wait for the busy timeout and raise StoreError with nothing recorded
and nothing run; a run accepted inside the engine (an async body's trigger) waits, unstarted,
and is recorded and run once the lock goes. The engine says what is wrong (`store_problem`,
one warning) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine, StoreError
from nbtasks.stores.sqlite import SQLiteStore


class _Told(logging.Handler):
    """Sets an event when the engine warns that it can't write (sequencing without sleeps)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.cant_write = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if "can't write" in record.getMessage():
            self.cant_write.set()


def _count(db: Path, sql: str, params: tuple[Any, ...] = ()) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute(sql, params).fetchone()[0])
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_held_lock_runs_nothing_unrecorded_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    told = _Told()
    logging.getLogger("nbtasks").addHandler(told)
    ran: list[Any] = []
    eng = Engine(store=SQLiteStore(db, busy_timeout=0.2))
    try:
        @eng.task(id="work")
        def work(p: Any, ctx: Any) -> Any:
            ran.append(p)
            return p

        go = asyncio.Event()

        @eng.task(id="parent")
        async def parent(p: Any, ctx: Any) -> Any:
            await go.wait()
            child = work.trigger({"child": True})  # on the engine loop: kept until recorded
            result = await child
            return result.output

        parent_handle = parent.trigger(None)
        before = eng.runs.count()
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError) as caught:
                work.trigger({"cell": 1})
            assert "database is locked" in str(caught.value)
            assert str(db) in str(caught.value)
            with pytest.raises(StoreError):
                work.batch_trigger([{"batch": i} for i in range(5)])

            # trigger_async awaited in a coroutine commits as a cell's trigger() does.
            with pytest.raises(StoreError, match="database is locked"):
                asyncio.run(work.trigger_async({"async": 1}))

            # A run triggered inside the engine is kept, unstarted, until its commit lands.
            eng.runtime.loop.call_soon_threadsafe(go.set)
            assert told.cant_write.wait(10)
            assert eng.store_problem is not None and "locked" in eng.store_problem
            assert str(db) in eng.store_problem
            assert ran == []
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert parent_handle.wait(timeout=10).output == {"child": True}
        assert eng.store_problem is None
        assert ran == [{"child": True}]
        assert eng.runs.count() == before + 1
    finally:
        eng.close()
        logging.getLogger("nbtasks").removeHandler(told)
    assert sum("can't write" in m for m in told.messages) == 1  # warned once, not per retry
    # What the file says after reopening: everything that ran is recorded, final; the
    # refused triggers left nothing.
    assert _count(db, "SELECT COUNT(*) FROM runs") == 2
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE status = 'COMPLETED'") == 2
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE payload LIKE '%cell%' "
                      "OR payload LIKE '%batch%' OR payload LIKE '%async%'") == 0
    assert _count(db, "SELECT COUNT(*) FROM attempts WHERE status = 'COMPLETED'") == 2


@pytest.mark.timeout(60)
def test_a_lock_released_within_the_busy_timeout_just_delays_trigger(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with Engine(store=SQLiteStore(db, busy_timeout=10)) as eng:
        work = eng.task(id="work", run=lambda p, ctx: p)
        holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(0.3, lambda: (holder.execute("ROLLBACK"), holder.close()))
        release.start()
        handle = work.trigger(7)  # waits for the lock, then commits
        release.join()
        assert handle.wait(timeout=10).output == 7
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE status = 'COMPLETED'") == 1
