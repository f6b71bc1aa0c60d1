"""No attempt starts, and nobody hears of a run, before its row is committed: on every path.

Each body looks at the file through a connection of its own as soon as it starts, so a run
started before its commit would not find itself. The writer is slowed down, which would make
such a run show every time. A row the store refuses withdraws its run: it never executes, and
its caller or waiter gets a StoreError naming the store.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _helpers import row_in_files

from nbtasks import Engine, RunEvent, StoreError
from nbtasks.stores._base import WriteBatch
from nbtasks.stores.sqlite import SQLiteStore


class SlowDisk(SQLiteStore):
    """Every commit takes 20 ms longer: a run started before its commit would show."""

    def write(self, batch: WriteBatch) -> None:
        time.sleep(0.02)
        super().write(batch)


def _on_disk(db: Path, run_id: str) -> bool:
    return row_in_files(db, run_id) is not None


@pytest.mark.timeout(60)
def test_every_trigger_path_starts_only_recorded_runs(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    seen: dict[str, bool] = {}
    created: dict[str, bool] = {}
    with Engine(store=SlowDisk(db)) as eng:
        @eng.task(id="probe")
        async def probe(p: Any, ctx: Any) -> Any:
            seen[ctx.run.id] = _on_disk(db, ctx.run.id)
            return p

        @eng.task(id="sync-probe")
        def sync_probe(p: Any, ctx: Any) -> Any:
            seen[ctx.run.id] = _on_disk(db, ctx.run.id)
            return p

        @eng.task(id="parent")
        async def parent(p: Any, ctx: Any) -> Any:
            seen[ctx.run.id] = _on_disk(db, ctx.run.id)
            handles = [probe.trigger("in-loop trigger")]
            handles += list(probe.batch_trigger(["in-loop batch"] * 3))
            handles.append(await probe.trigger_async("in-loop trigger_async"))
            waited = await probe.trigger_and_wait("trigger_and_wait")
            both = await probe.batch_trigger_and_wait(["batch_and_wait"] * 2)
            outs = [(await h).output for h in handles]
            return [*outs, waited.output, *[r.output for r in both.runs]]

        def on_event(event: RunEvent) -> None:
            if event.kind == "created":  # subscribers hear of a run once it is recorded
                created[event.run_id] = _on_disk(db, event.run_id)

        eng.subscribe(on_event)
        handles = [probe.trigger("cell"), sync_probe.trigger("cell sync")]
        handles += list(probe.batch_trigger(["cell batch"] * 5))
        handles.append(asyncio.run(probe.trigger_async("trigger_async")))
        handles.append(probe.trigger("keyed", idempotency_key="k1"))
        handles.append(parent.trigger(None))
        results = eng.wait_results([h.id for h in handles], timeout=30)
        assert all(r.ok for r in results)
        assert len(results[-1].output) == 8
    assert len(seen) == 9 + 1 + 8  # from the cell, the parent, from inside the parent
    assert all(seen.values()), [k for k, v in seen.items() if not v]
    assert len(created) == len(seen)
    assert all(created.values())


@pytest.mark.timeout(60)
def test_a_refused_new_row_withdraws_its_run(tmp_path: Path) -> None:
    """A bad string that slipped past the encoders: nothing recorded, nothing run, others fine."""
    db = tmp_path / "runs.db"
    ran: list[Any] = []
    bad_payload = '"report-\udcff.csv"'  # already-encoded JSON, as trigger() would pass it on
    with Engine(store=str(db)) as eng:
        @eng.task(id="work")
        async def work(p: Any, ctx: Any) -> Any:
            ran.append(p)
            return p

        defn = eng.registry.require("work")
        # From a cell: the caller's own commit fails, so trigger raises and records nothing.
        with pytest.raises(StoreError) as caught:
            eng.trigger_encoded(defn, bad_payload, {})
        assert str(db) in str(caught.value) and "surrogate" in str(caught.value)

        # On the engine loop, in one batch with good runs: only the bad one is withdrawn.
        async def from_loop() -> list[str]:
            good = [eng.trigger_encoded(defn, str(i), {}).id for i in range(5)]
            bad = eng.trigger_encoded(defn, bad_payload, {}).id
            return [*good, bad]

        ids = eng.runtime.call(from_loop)
        good = eng.wait_results(ids[:5], timeout=10)
        assert [r.output for r in good] == [0, 1, 2, 3, 4]
        with pytest.raises(StoreError, match="could not be recorded"):
            eng.wait_result(ids[5], timeout=10)

        # trigger_async awaited in a coroutine commits as a cell does: it raises too.
        with pytest.raises(StoreError, match="surrogate"):
            asyncio.run(eng.trigger_async(defn, bad_payload, {}))
        assert not eng.scheduler.active
    assert sorted(ran) == [0, 1, 2, 3, 4]
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 5
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_concurrent_triggers_with_one_key_run_once(tmp_path: Path) -> None:
    """Keyed triggers are checked on the engine loop, whichever path they come by."""
    db = tmp_path / "runs.db"
    ran: list[Any] = []
    with Engine(store=str(db)) as eng:
        @eng.task(id="once")
        def once(p: Any, ctx: Any) -> Any:
            ran.append(p)
            return p

        ids: list[str] = []
        barrier = threading.Barrier(8)

        def from_thread(i: int) -> None:
            barrier.wait()
            ids.append(once.trigger(i, idempotency_key="same").id)

        threads = [threading.Thread(target=from_thread, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)

        async def gathered() -> list[str]:
            handles = await asyncio.gather(*(once.trigger_async(i, idempotency_key="same")
                                             for i in range(8)))
            return [h.id for h in handles]

        ids += asyncio.run(gathered())
        ids += [h.id for h in once.batch_trigger([1, 2], idempotency_key="same")]
        assert len(set(ids)) == 1
        eng.wait_result(ids[0], timeout=10)
    assert len(ran) == 1
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_gathered_trigger_async_calls_commit_in_parts_and_a_refused_part_stops_the_rest(
        tmp_path: Path) -> None:
    """`gather` of many `trigger_async` calls commits them a part at a time, each part handed
    to the engine as soon as it is on disk (the first runs start while later parts commit).
    A part the store refuses fails its calls and every later one, with nothing of theirs
    recorded; the parts before it are recorded and run. Checked in the reopened file."""
    from nbtasks._group_commit import PART, parts

    n = 3 * PART
    bounds = list(parts(n))
    assert bounds[0] == (0, 64) and bounds[-1][1] == n and len(bounds) > 3
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    db = tmp_path / "runs.db"
    ran: list[int] = []
    rows_seen_at_first_start: list[int] = []
    bad_payload = '"report-\udcff.csv"'
    with Engine(store=SlowDisk(db), concurrency_limit=1000) as eng:
        @eng.task(id="work")
        async def work(p: Any, ctx: Any) -> Any:
            if not ran:
                con = sqlite3.connect(db)
                try:
                    rows_seen_at_first_start.append(
                        con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
                finally:
                    con.close()
            ran.append(p)
            return p

        defn = eng.registry.require("work")

        async def gathered(payloads: list[str]) -> list[Any]:
            return await asyncio.gather(
                *(eng.trigger_async(defn, pj, {}) for pj in payloads), return_exceptions=True)

        # Good parts only: the first part's runs start before the last part is on disk.
        first = asyncio.run(gathered([str(i) for i in range(n)]))
        assert all(not isinstance(h, BaseException) for h in first)
        eng.wait_results([h.id for h in first], timeout=30)
        assert rows_seen_at_first_start and rows_seen_at_first_start[0] < n

        # The third part holds a row the store refuses: it and every later part fail.
        payloads = [str(n + i) for i in range(n)]
        third = bounds[2][0]
        payloads[third + 7] = bad_payload
        second = asyncio.run(gathered(payloads))
        ok = [h for h in second if not isinstance(h, BaseException)]
        failed = [h for h in second if isinstance(h, BaseException)]
        assert len(ok) == third and len(failed) == n - third
        assert all(isinstance(e, StoreError) and "surrogate" in str(e) for e in failed)
        assert [h.wait(timeout=30).ok for h in ok] == [True] * third
    assert sorted(ran) == list(range(n + third))
    con = sqlite3.connect(db)
    try:
        stored = {int(p) for (p,) in con.execute("SELECT payload FROM runs")}
    finally:
        con.close()
    assert stored == set(range(n + third))
