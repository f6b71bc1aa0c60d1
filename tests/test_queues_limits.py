"""Queue limits, concurrency keys, `total`, the engine-wide limit: never exceeded, measured."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _helpers import Gate

import nbtasks
from nbtasks import BatchItem, ConfigurationError, Engine, RunStatus

WaitStatus = Callable[..., RunStatus]




class Meter:
    """Counts runs inside their bodies, per queue and per (queue, key), and keeps the peaks."""

    def __init__(self) -> None:
        self.now: Counter[Any] = Counter()
        self.peak: Counter[Any] = Counter()

    async def measure(self, *keys: Any) -> None:
        for k in keys:
            self.now[k] += 1
            self.peak[k] = max(self.peak[k], self.now[k])
        for _ in range(3):  # stay running across a few loop turns so runs overlap
            await asyncio.sleep(0)
        for k in keys:
            self.now[k] -= 1


def queue_snapshot(eng: Engine, name: str) -> dict[str, Any]:
    return eng.queues.retrieve(name)


@pytest.mark.timeout(120)
def test_limits_hold_over_ten_thousand_runs(db_path: Path) -> None:
    meter = Meter()
    with Engine(store=str(db_path), concurrency_limit=100) as eng:
        @eng.task(id="limited", queue={"concurrency_limit": 5})
        async def limited(payload: int, ctx: Any) -> None:
            await meter.measure("limited")

        @eng.task(id="keyed", queue=nbtasks.queue(name="keyed", concurrency_limit=2))
        async def keyed(payload: int, ctx: Any) -> None:
            await meter.measure("keyed", ("keyed", payload % 20))

        @eng.task(id="capped", queue=nbtasks.queue(name="capped", concurrency_limit=3, total=7))
        async def capped(payload: int, ctx: Any) -> None:
            await meter.measure("capped", ("capped", payload % 10))

        batches = []
        for start in range(0, 4000, 500):
            batches.append(limited.batch_trigger(list(range(start, start + 500))))
        for start in range(0, 3000, 500):
            batches.append(keyed.batch_trigger(
                [BatchItem(i, concurrency_key=f"k{i % 20}") for i in range(start, start + 500)]))
            batches.append(capped.batch_trigger(
                [BatchItem(i, concurrency_key=f"c{i % 10}") for i in range(start, start + 500)]))
        results = [r for b in batches for r in b.wait(timeout=100)]
        assert len(results) == 10_000 and all(r.ok for r in results)

        # Measured inside the runs: every limit reached and none exceeded.
        assert meter.peak["limited"] == 5
        per_key = [meter.peak[("keyed", k)] for k in range(20)]
        assert max(per_key) == 2
        assert 2 < meter.peak["keyed"] <= 40
        capped_keys = [meter.peak[("capped", k)] for k in range(10)]
        assert max(capped_keys) <= 3 and meter.peak["capped"] == 7
        # The dispatcher's own bookkeeping agrees.
        assert (queue_snapshot(eng, "task/limited")["peak"],
                queue_snapshot(eng, "task/limited")["peak_per_key"]) == (5, 5)
        assert queue_snapshot(eng, "keyed")["peak_per_key"] == 2
        assert queue_snapshot(eng, "capped")["peak"] == 7
        assert eng.runs.count(status="COMPLETED") == 10_000


def test_engine_wide_limit_bounds_every_queue(db_path: Path) -> None:
    with Engine(store=str(db_path), concurrency_limit=3) as eng:
        gate = Gate(eng)
        tasks = []
        for i in range(3):
            async def body(payload: Any, ctx: Any) -> None:
                await gate.wait()

            tasks.append(eng.task(id=f"free-{i}", run=body))
        handles = [t.trigger(None) for t in tasks for _ in range(3)]
        listing = eng.queues.list()
        assert sum(q["running"] for q in listing) == 3
        assert sum(q["queued"] for q in listing) == 6
        eng.configure(concurrency_limit=5)
        assert sum(q["running"] for q in eng.queues.list()) == 5
        gate.open()
        assert all(h.wait(timeout=10).ok for h in handles)


def test_default_engine_limit_is_100(engine: Engine) -> None:
    assert engine.config.concurrency_limit == 100
    gate = Gate(engine)

    @engine.task(id="many")
    async def many(payload: Any, ctx: Any) -> None:
        await gate.wait()

    batch = many.batch_trigger([None] * 130)
    assert queue_snapshot(engine, "task/many")["running"] == 100
    gate.open()
    assert all(r.ok for r in batch.wait(timeout=30))


def test_limit_zero_pauses_the_queue_until_raised(engine: Engine) -> None:
    @engine.task(id="paused-by-zero", queue={"concurrency_limit": 0})
    async def paused(payload: int, ctx: Any) -> int:
        return payload

    handle = paused.trigger(5)
    snap = queue_snapshot(engine, "task/paused-by-zero")
    assert (snap["running"], snap["queued"], snap["concurrency_limit"]) == (0, 1, 0)
    assert handle.status is RunStatus.QUEUED

    @engine.task(id="paused-by-zero", queue={"concurrency_limit": 1})  # the cell run again
    async def resumed(payload: int, ctx: Any) -> int:
        return payload

    assert handle.wait(timeout=10).output == 5


def test_named_queue_is_shared_by_tasks(engine: Engine, wait_status: WaitStatus) -> None:
    shared = nbtasks.queue(name="shared-db", concurrency_limit=1)
    gate = Gate(engine)

    @engine.task(id="writer-a", queue=shared)
    async def writer_a(payload: Any, ctx: Any) -> str:
        await gate.wait()
        return ctx.queue.name

    @engine.task(id="writer-b", queue=shared)
    async def writer_b(payload: Any, ctx: Any) -> str:
        return ctx.queue.name

    first = writer_a.trigger(None)
    wait_status(engine, first.id, RunStatus.EXECUTING)
    second = writer_b.trigger(None)
    snap = queue_snapshot(engine, "shared-db")
    assert (snap["running"], snap["queued"]) == (1, 1)
    assert second.status is RunStatus.QUEUED
    gate.open()
    assert first.wait(timeout=10).output == second.wait(timeout=10).output == "shared-db"


def test_concurrency_key_gives_each_key_its_own_limit(engine: Engine) -> None:
    gate = Gate(engine)

    @engine.task(id="per-user", queue={"concurrency_limit": 1})
    async def per_user(payload: str, ctx: Any) -> str:
        await gate.wait()
        return payload

    u1 = [per_user.trigger("u1", concurrency_key="user-1") for _ in range(2)]
    u2 = per_user.trigger("u2", concurrency_key="user-2")
    snap = queue_snapshot(engine, "task/per-user")
    assert (snap["running"], snap["queued"]) == (2, 1)
    assert snap["keys"] == {"user-1": {"running": 1, "queued": 1},
                            "user-2": {"running": 1, "queued": 0}}
    assert engine.runs.retrieve(u2.id).concurrency_key == "user-2"
    gate.open()
    assert [h.wait(timeout=10).output for h in [*u1, u2]] == ["u1", "u1", "u2"]


def test_total_caps_all_keys_together(engine: Engine) -> None:
    gate = Gate(engine)

    @engine.task(id="tenants", queue={"concurrency_limit": 2, "total": 3})
    async def tenants(payload: Any, ctx: Any) -> None:
        await gate.wait()

    handles = [tenants.trigger(None, concurrency_key=f"t{i % 4}") for i in range(8)]
    snap = queue_snapshot(engine, "task/tenants")
    assert (snap["running"], snap["queued"], snap["total"]) == (3, 5, 3)
    assert all(k["running"] <= 2 for k in snap["keys"].values())
    gate.open()
    assert all(h.wait(timeout=10).ok for h in handles)


def test_trigger_time_queue_option(engine: Engine) -> None:
    gate = Gate(engine)

    @engine.task(id="flexible")
    async def flexible(payload: Any, ctx: Any) -> str:
        await gate.wait()
        return ctx.queue.name

    a = flexible.trigger(None, queue={"name": "adhoc", "concurrency_limit": 1})
    b = flexible.trigger(None, queue="adhoc")  # by name: the queue made just above
    snap = queue_snapshot(engine, "adhoc")
    assert (snap["concurrency_limit"], snap["running"], snap["queued"]) == (1, 1, 1)
    gate.open()
    assert a.wait(timeout=10).output == b.wait(timeout=10).output == "adhoc"
    assert engine.runs.retrieve(b.id).queue == "adhoc"


def test_queue_names_are_sanitised_and_limits_validated(engine: Engine) -> None:
    assert nbtasks.queue(name="my queue!/v1").name == "myqueue/v1"
    assert len(nbtasks.queue(name="q" * 300).name or "") == 128
    with pytest.raises(ConfigurationError):
        nbtasks.queue(name="x", concurrency_limit=1001)
    with pytest.raises(ConfigurationError):
        nbtasks.queue(name="x", total=-1)
    with pytest.raises(ConfigurationError, match="name"):
        nbtasks.queue(name="")
    with pytest.raises(ConfigurationError, match="no queue named"):
        engine.queues.retrieve("never-made")


def test_sync_bodies_respect_limits_and_keys(engine: Engine) -> None:
    lock = threading.Lock()
    now: Counter[Any] = Counter()
    peak: Counter[Any] = Counter()

    @engine.task(id="sync-limited", queue={"concurrency_limit": 4})
    def sync_limited(payload: int, ctx: Any) -> None:
        key = ("key", ctx.queue.name, payload % 3)
        with lock:
            for k in ("queue", key):
                now[k] += 1
                peak[k] = max(peak[k], now[k])
        time.sleep(0.005)  # hold the slot briefly so runs overlap
        with lock:
            for k in ("queue", key):
                now[k] -= 1

    batch = sync_limited.batch_trigger([BatchItem(i, concurrency_key=f"k{i % 3}")
                                        for i in range(300)])
    assert all(r.ok for r in batch.wait(timeout=60))
    assert max(peak[("key", "task/sync-limited", k)] for k in range(3)) == 4
    assert peak["queue"] <= 12 and peak["queue"] > 4
