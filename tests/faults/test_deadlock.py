"""No deadlock at any depth: waits don't hold the sync thread pool, cancels don't recurse.

Sync bodies run on a pool capped at 64 threads. A body blocked waiting for a child used to
hold its thread, so 64 waiting parents left no thread for any child: a silent hang. And the
cancel of a deep chain recursed once per level until Python's recursion limit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine

POOL = 64  # the kernel machine's thread cap (InlineExecutor's default)


class Crowd:
    """Holds the first `size` arrivals until all are in; later ones pass straight through.

    With `size` = the pool's cap, every thread is taken by a parent before any child asks for
    one: the old pool then deadlocked every time, not just when the timing was unlucky.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self.lock = threading.Lock()
        self.full = threading.Event()

    def arrive(self) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.size:
                self.full.set()
        assert self.full.wait(60), "the pool never ran a full crowd of bodies"


def _statuses(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    finally:
        con.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("depth", [POOL + 6, 200])
def test_a_sync_recursion_deeper_than_the_pool_completes(db_path: Path, depth: int) -> None:
    with Engine(store=str(db_path)) as eng:

        def down(n: int, ctx: Any) -> int:
            if n == 0:
                return 0
            return int(rec.trigger(n - 1).wait(timeout=120).output or 0) + 1

        rec = eng.task(id="rec", run=down)
        assert rec.trigger(depth).wait(timeout=120).output == depth
        threads = eng.inline.threads
        assert threads.parked == 0
    assert _statuses(db_path) == {"COMPLETED": depth + 1}


@pytest.fixture(params=["settled at once", "settled slowly"])
def settle(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """"settled slowly": a pool thread lingers after handing on its run's end, as one does
    when the engine takes the GIL first (seen once on Python 3.13). Its count must already be
    right by then: whoever hears of the end may look at the pool at once."""
    if request.param == "settled slowly":
        from nbtasks.executors.inline import DaemonThreads

        real = DaemonThreads._settle

        def slow(*args: Any) -> None:
            real(*args)
            time.sleep(0.05)

        monkeypatch.setattr(DaemonThreads, "_settle", staticmethod(slow))


@pytest.mark.timeout(180)
def test_more_sync_parents_than_threads_each_waiting_on_a_sync_child(
        db_path: Path, settle: None) -> None:
    parents = POOL + 16
    with Engine(store=str(db_path)) as eng:
        all_started = Crowd(POOL)
        kid = eng.task(id="kid", run=lambda n, ctx: n * 2)

        def parent(n: int, ctx: Any) -> int:
            all_started.arrive()  # every parent holds a thread before any child is asked for
            return int(kid.trigger(n).wait(timeout=120).output or 0)

        par = eng.task(id="parent", run=parent)
        batch = par.batch_trigger(list(range(parents)))
        results = batch.wait(timeout=120)
        assert [r.output for r in results] == [2 * i for i in range(parents)]
        # The pool grew only for the waits: afterwards it is back within its cap.
        threads = eng.inline.threads
        assert threads.parked == 0 and threads.alive <= POOL
    assert _statuses(db_path) == {"COMPLETED": 2 * parents}


@pytest.mark.timeout(180)
def test_sync_waits_of_every_kind_release_their_thread(db_path: Path) -> None:
    """wait.for_token_sync and asyncio.run(trigger_and_wait) park their thread too."""
    n = POOL + 6
    with Engine(store=str(db_path)) as eng:
        all_started = Crowd(POOL)
        kid = eng.task(id="kid", run=lambda x, ctx: x + 1)

        def by_token(x: int, ctx: Any) -> int:
            all_started.arrive()
            token = eng.wait.create_token(timeout="1m")
            kid_handle = helper.trigger(str(token))
            result = eng.wait.for_token_sync(token)
            kid_handle.wait(timeout=120)
            return int(result.output["x"]) if result.ok else -1

        def completes(token: str, ctx: Any) -> None:
            eng.wait.complete_token(token, {"x": 7})

        def by_asyncio(x: int, ctx: Any) -> int:
            all_started.arrive()
            return int(asyncio.run(kid.trigger_and_wait(x)).output or 0)

        helper = eng.task(id="helper", run=completes)
        tok = eng.task(id="tok", run=by_token)
        aio = eng.task(id="aio", run=by_asyncio)
        half = n // 2
        a = tok.batch_trigger([0] * half)
        b = aio.batch_trigger(list(range(n - half)))
        assert [r.output for r in a.wait(timeout=120)] == [7] * half
        assert [r.output for r in b.wait(timeout=120)] == [i + 1 for i in range(n - half)]


@pytest.mark.timeout(300)
def test_cancelling_the_root_of_a_2000_deep_chain_cancels_every_run(db_path: Path) -> None:
    depth = 2000
    with Engine(store=str(db_path)) as eng:
        leaf_reached = threading.Event()

        async def link(n: int, ctx: Any) -> None:
            if n == 0:
                leaf_reached.set()
                await asyncio.Event().wait()  # until cancelled
            await chain.trigger_and_wait(n - 1)

        chain = eng.task(id="chain", run=link)
        root = chain.trigger(depth)
        assert leaf_reached.wait(240), "the chain never reached its leaf"
        assert root.cancel() is True
        assert not root.wait(timeout=60).ok
    assert _statuses(db_path) == {"CANCELED": depth + 1}
