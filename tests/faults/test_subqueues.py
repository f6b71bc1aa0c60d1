"""The dispatcher forgets a concurrency key's or a trigger-time queue's sub-queue once it is empty.

Without this, every key ever used stays in memory for the kernel's life, and `queues.list()`
walks them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _helpers import Gate

from nbtasks import BatchItem, Engine, RunStatus


def _sub_queues(eng: Engine) -> int:
    return eng.on_loop(  # type: ignore[no-any-return]
        lambda: sum(len(q.subs) for q in eng.scheduler.dispatcher.queues.values()))


@pytest.mark.timeout(60)
def test_finished_keys_and_trigger_time_queues_leave_no_sub_queue(db_path: Path) -> None:
    with Engine(store=str(db_path)) as eng:
        @eng.task(id="noop")
        async def noop(payload: int, ctx: Any) -> int:
            return payload

        keyed = [BatchItem(i, concurrency_key=f"user-{i}") for i in range(500)]
        queued = [BatchItem(i, queue={"name": f"q-{i}", "concurrency_limit": 1},
                            concurrency_key=f"k-{i}") for i in range(500)]
        plain = [BatchItem(i, queue={"name": f"p-{i}", "concurrency_limit": 2}) for i in range(500)]
        for items in (keyed, queued, plain):
            assert all(r.ok for r in noop.batch_trigger(items).wait(timeout=30))
        assert _sub_queues(eng) == 0
        # The queues themselves stay: their limits are what a trigger set.
        q = eng.queues.retrieve("q-7")
        assert q["concurrency_limit"] == 1 and q["queued"] == 0 and q["keys"] == {}


@pytest.mark.timeout(30)
def test_a_key_comes_back_with_its_limit_and_order(db_path: Path) -> None:
    """A key whose sub-queue was dropped is made afresh and still runs one at a time, in order."""
    with Engine(store=str(db_path)) as eng:
        gate = Gate(eng)
        order: list[int] = []
        running = 0
        peak = 0

        @eng.task(id="one-at-a-time", queue={"concurrency_limit": 1})
        async def body(payload: int, ctx: Any) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if payload == 0:
                await gate.wait()
            order.append(payload)
            running -= 1

        body.trigger(-1, concurrency_key="user-1").wait(timeout=10)
        assert _sub_queues(eng) == 0
        handles = [body.trigger(i, concurrency_key="user-1") for i in range(5)]
        assert eng.queues.retrieve("task/one-at-a-time")["keys"] == \
            {"user-1": {"running": 1, "queued": 4}}
        gate.open()
        for h in handles:
            h.wait(timeout=10)
        assert order == [-1, 0, 1, 2, 3, 4] and peak == 1
        assert _sub_queues(eng) == 0


@pytest.mark.timeout(30)
def test_a_cancelled_queued_run_leaves_no_sub_queue(
        db_path: Path, wait_status: Any) -> None:
    with Engine(store=str(db_path)) as eng:
        eng.queues.pause("held")

        @eng.task(id="held", queue={"name": "held", "concurrency_limit": 1})
        async def held(payload: int, ctx: Any) -> None:
            return None

        handle = held.trigger(1, concurrency_key="only")
        assert _sub_queues(eng) == 1
        eng.runs.cancel(handle.id)
        wait_status(eng, handle.id, RunStatus.CANCELED)
        assert _sub_queues(eng) == 0
