"""A burst of runs keeps full garbage collections short, and gives the collector back after.

Checked through the collector itself, never by timing: what is frozen (`gc.get_freeze_count()`)
while a burst is in flight and after it, and whether a reference cycle dropped during the burst
is freed then, or only once the burst is over.
"""

from __future__ import annotations

import gc
import os
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import ConfigurationError, Engine
from nbtasks._collector import BURST_RUNS, COLLECTOR, MAX_FROZEN, REFREEZE_RUNS
from nbtasks.testing import ManualClock


class _Node:
    """A reference cycle: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


def _cycle() -> weakref.ref[_Node]:
    return weakref.ref(_Node())


def _live_cycle() -> tuple[_Node, weakref.ref[_Node]]:
    node = _Node()
    return node, weakref.ref(node)


@pytest.fixture(autouse=True)
def _nothing_frozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen, whatever it did."""
    gc.unfreeze()
    yield
    gc.unfreeze()
    assert not COLLECTOR.frozen


def _noop_task(engine: Engine, name: str) -> nbtasks.Task[int, None]:
    async def noop(payload: int, ctx: Any) -> None:
        return None

    return engine.task(id=name, run=noop)


def _batches(task: nbtasks.Task[int, None], n: int) -> list[nbtasks.BatchHandle[None]]:
    return [task.batch_trigger(list(range(i, min(i + 500, n)))) for i in range(0, n, 500)]


def _wait_all(batches: list[nbtasks.BatchHandle[None]]) -> None:
    for b in batches:
        assert all(r.ok for r in b.wait(timeout=60))


def _held_burst(engine: Engine, n: int = BURST_RUNS,
                name: str = "held") -> list[nbtasks.BatchHandle[None]]:
    """`n` runs in flight and held there (their queue is paused) until `_release`."""
    task = _noop_task(engine, name)
    engine.queues.pause(f"task/{name}")
    batch = _batches(task, n)
    deadline = time.monotonic() + 30
    while engine.queues.retrieve(f"task/{name}")["queued"] < n:
        assert time.monotonic() < deadline, engine.queues.retrieve(f"task/{name}")
        time.sleep(0.01)
    return batch


def _release(engine: Engine, batch: list[nbtasks.BatchHandle[None]], name: str = "held") -> None:
    engine.queues.resume(f"task/{name}")
    _wait_all(batch)


@pytest.mark.timeout(60)
def test_a_burst_freezes_what_existed_and_gives_it_back_when_idle(engine: Engine) -> None:
    node, ref = _live_cycle()
    batch = _held_burst(engine)
    assert COLLECTOR.frozen and gc.get_freeze_count() > 0
    del node  # garbage now, but frozen: a full collection doesn't see it during the burst
    gc.collect()
    assert ref() is not None
    _release(engine, batch)
    assert not COLLECTOR.frozen and gc.get_freeze_count() == 0  # idle: all given back
    gc.collect()
    assert ref() is None


@pytest.mark.timeout(60)
def test_fewer_runs_than_a_burst_leave_the_collector_alone(engine: Engine) -> None:
    batch = _held_burst(engine, BURST_RUNS - 1)
    assert not COLLECTOR.frozen and gc.get_freeze_count() == 0
    _release(engine, batch)


@pytest.mark.timeout(60)
def test_gc_freeze_false_leaves_the_collector_alone(db_path: Path) -> None:
    with Engine(store=str(db_path), gc_freeze=False) as eng:
        node, ref = _live_cycle()
        batch = _held_burst(eng)
        assert not COLLECTOR.frozen and gc.get_freeze_count() == 0
        del node
        gc.collect()
        assert ref() is None
        _release(eng, batch)


@pytest.mark.timeout(60)
def test_configure_gc_freeze_false_ends_a_burst_in_flight(engine: Engine) -> None:
    batch = _held_burst(engine)
    assert COLLECTOR.frozen
    engine.configure(gc_freeze=False)
    deadline = time.monotonic() + 10
    while COLLECTOR.frozen:  # applied on the engine loop
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert gc.get_freeze_count() == 0
    _release(engine, batch)


@pytest.mark.timeout(60)
def test_a_freeze_made_by_someone_else_is_left_alone(engine: Engine) -> None:
    node, ref = _live_cycle()
    gc.freeze()
    batch = _held_burst(engine)
    assert not COLLECTOR.frozen
    _release(engine, batch)
    del node
    gc.collect()
    assert ref() is not None  # still frozen: the engine gave back nothing it didn't freeze
    gc.unfreeze()
    gc.collect()
    assert ref() is None


@pytest.mark.timeout(60)
def test_a_long_burst_freezes_what_it_made_every_slice(engine: Engine) -> None:
    batch = _held_burst(engine)
    first = gc.get_freeze_count()
    made = [[i] for i in range(5_000)]  # survivors of the burst, made after the freeze
    _wait_all(_batches(_noop_task(engine, "flow"), REFREEZE_RUNS + 10))
    assert COLLECTOR.frozen  # the held runs keep the burst going
    assert gc.get_freeze_count() >= first + len(made)
    _release(engine, batch)
    assert gc.get_freeze_count() == 0


@pytest.mark.timeout(60)
def test_a_burst_past_max_frozen_is_thawed_and_waits_for_a_full_pass(
        clocked: Engine, clock: ManualClock) -> None:
    node, ref = _live_cycle()
    batch = _held_burst(clocked)
    assert COLLECTOR.frozen
    del node
    clock.advance(MAX_FROZEN)
    assert not COLLECTOR.frozen and gc.get_freeze_count() == 0  # still in the burst
    passes = gc.get_stats()[-1]["collections"]
    clock.advance(MAX_FROZEN / 4)  # the next slice: no full collection yet, so no freeze
    if gc.get_stats()[-1]["collections"] == passes:
        assert not COLLECTOR.frozen
    gc.collect()  # the full pass: the cycle frozen by the burst is freed ...
    assert ref() is None
    clock.advance(MAX_FROZEN / 4)  # ... and the burst may freeze again
    assert COLLECTOR.frozen
    _release(clocked, batch)
    assert not COLLECTOR.frozen


@pytest.mark.timeout(60)
def test_the_freeze_lasts_until_the_last_engine_in_a_burst_is_idle(
        engine: Engine, tmp_path: Path) -> None:
    with Engine(store=str(tmp_path / "other" / "runs.db")) as other:
        mine = _held_burst(engine)
        theirs = _held_burst(other)
        _release(engine, mine)
        assert COLLECTOR.frozen  # the other engine's burst is still in flight
        _release(other, theirs)
        assert not COLLECTOR.frozen and gc.get_freeze_count() == 0


@pytest.mark.timeout(60)
def test_closing_an_engine_in_a_burst_gives_everything_back(db_path: Path) -> None:
    eng = Engine(store=str(db_path))
    _held_burst(eng)
    assert COLLECTOR.frozen
    eng.close()
    assert not COLLECTOR.frozen and gc.get_freeze_count() == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_gc_freeze_that_is_not_a_bool_is_refused(db_path: Path, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"Engine: gc_freeze must be True or False"):
        Engine(store=str(db_path), gc_freeze=value)
    with pytest.raises(ConfigurationError, match=r"configure: gc_freeze must be True or False"):
        nbtasks.configure(gc_freeze=value)
    assert not db_path.exists()  # refused before the store was made


@pytest.mark.timeout(60)
def test_a_burst_whose_runs_are_all_withdrawn_ends_with_them(engine: Engine) -> None:
    """Runs the store refuses never finish; the last of them out of flight ends the burst."""
    _noop_task(engine, "work")
    defn = engine.registry.require("work")
    bad_payload = '"report-\udcff.csv"'  # encoded JSON SQLite refuses (a lone surrogate)

    async def from_loop() -> list[str]:
        ids = [engine.trigger_encoded(defn, bad_payload, {}).id for _ in range(BURST_RUNS)]
        assert COLLECTOR.frozen  # in flight, their commit still to come
        return ids

    ids = engine.runtime.call(from_loop)
    with pytest.raises(nbtasks.StoreError, match="could not be recorded"):
        engine.wait_result(ids[-1], timeout=30)
    deadline = time.monotonic() + 10
    while engine.scheduler.active:  # the refusals reach the loop in slices
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not COLLECTOR.frozen and gc.get_freeze_count() == 0


@pytest.mark.timeout(60)
def test_a_child_forked_in_a_burst_keeps_the_freeze_as_someone_elses(engine: Engine) -> None:
    """None of the parent's engines run in the child: it is in no burst, and the objects it
    shares with its parent stay frozen (a thaw would copy them all on the next collection)."""
    batch = _held_burst(engine)
    assert COLLECTOR.frozen
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        ok = not COLLECTOR.frozen and gc.get_freeze_count() > 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert COLLECTOR.frozen  # the parent's burst goes on
    _release(engine, batch)
