"""A burst of runs puts automatic full garbage collections off, and gives the collector back.

Checked through the collector itself, never by timing: its oldest generation's threshold
while a burst is in flight and after it, and whether enough allocation to set off a full
collection does so during a burst (it must not) and after it (it must).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import wait_queued

import nbtasks
from nbtasks import ConfigurationError, Engine, _collector
from nbtasks._collector import (
    ARRIVALS_STRIDE,
    BURST_RUNS,
    CHECK_EVERY,
    COLLECTOR,
    HELD,
    IDLE_GRACE,
    MAX_HELD,
    QUIET_RUNS,
)
from nbtasks._schedules import ScheduleBook
from nbtasks.testing import ManualClock


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    """Each test starts with the default thresholds and the collector on, and leaves them so."""
    found = gc.get_threshold()
    gc.enable()
    gc.set_threshold(700, 10, 10)
    yield
    assert not COLLECTOR.holding and not COLLECTOR._busy
    COLLECTOR._released_at_pass = None
    gc.enable()
    gc.set_threshold(*found)


def _oldest() -> int:
    return gc.get_threshold()[2]


def _full_passes() -> int:
    return int(gc.get_stats()[-1]["collections"])


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
    wait_queued(engine, f"task/{name}", n)
    return batch


def _release(engine: Engine, batch: list[nbtasks.BatchHandle[None]], name: str = "held") -> None:
    engine.queues.resume(f"task/{name}")
    _wait_all(batch)


def _idle(engine: Engine, clock: ManualClock) -> None:
    """Fewer than QUIET_RUNS runs of `engine` are in flight; then IDLE_GRACE passes, and the
    checks that see it."""
    deadline = time.monotonic() + 10
    while len(engine.scheduler.active) >= QUIET_RUNS:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    clock.advance(IDLE_GRACE + 2 * CHECK_EVERY)


def _allocate_a_full_pass_worth() -> list[list[int]]:
    """Enough long-lived objects, and enough churn, to set off automatic full collections
    many times over (each needs the survivors to grow by a quarter of the heap)."""
    kept = [[i] for i in range(2 * len(gc.get_objects()))]
    for _ in range(200_000):
        [0]  # noqa: B018 - short-lived containers drive the young collections
    return kept


@pytest.mark.timeout(60)
def test_no_automatic_full_collection_during_a_burst_and_one_after(
        clocked: Engine, clock: ManualClock) -> None:
    batch = _held_burst(clocked)
    assert COLLECTOR.holding and _oldest() == HELD
    before = _full_passes()
    kept = _allocate_a_full_pass_worth()
    assert _full_passes() == before  # put off
    _release(clocked, batch)
    assert COLLECTOR.holding  # idle for less than IDLE_GRACE: a burst close behind is the same
    _idle(clocked, clock)
    assert not COLLECTOR.holding and _oldest() == 10  # given back
    del kept
    more = _allocate_a_full_pass_worth()
    assert _full_passes() > before  # and CPython collects as it always does
    del more


@pytest.mark.timeout(60)
def test_without_the_burst_policy_full_collections_happen_as_usual(db_path: Path) -> None:
    """The check above can fail: the same allocation sets off a full pass with the policy off."""
    with Engine(store=str(db_path), defer_gc=False) as eng:
        batch = _held_burst(eng)
        assert not COLLECTOR.holding and _oldest() == 10
        before = _full_passes()
        kept = _allocate_a_full_pass_worth()
        assert _full_passes() > before
        _release(eng, batch)
        del kept


@pytest.mark.timeout(60)
def test_fewer_runs_than_a_burst_leave_the_collector_alone(engine: Engine) -> None:
    batch = _held_burst(engine, BURST_RUNS - 1)
    assert not COLLECTOR.holding and _oldest() == 10
    _release(engine, batch)


@pytest.mark.timeout(60)
def test_bursts_close_together_are_one(clocked: Engine, clock: ManualClock) -> None:
    _release(clocked, _held_burst(clocked, name="first"), name="first")
    clock.advance(IDLE_GRACE / 2)
    assert COLLECTOR.holding
    second = _held_burst(clocked, name="second")
    clock.advance(2 * IDLE_GRACE)  # runs in flight: not quiet, whatever the time
    assert COLLECTOR.holding
    _release(clocked, second, name="second")
    _idle(clocked, clock)
    assert not COLLECTOR.holding


@pytest.mark.timeout(60)
def test_configure_defer_gc_false_ends_a_burst_in_flight(engine: Engine) -> None:
    batch = _held_burst(engine)
    assert COLLECTOR.holding
    engine.configure(defer_gc=False)
    deadline = time.monotonic() + 10
    while COLLECTOR.holding:  # applied on the engine loop
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _oldest() == 10
    _release(engine, batch)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("theirs", ["disabled", "threshold 0", "held already"])
def test_a_collector_managed_by_someone_else_is_left_alone(engine: Engine, theirs: str) -> None:
    if theirs == "disabled":
        gc.disable()
    else:
        gc.set_threshold(0, 10, 10) if theirs == "threshold 0" else gc.set_threshold(700, 10, HELD)
    found = (gc.isenabled(), gc.get_threshold())
    batch = _held_burst(engine)
    assert not COLLECTOR.holding
    _release(engine, batch)
    assert (gc.isenabled(), gc.get_threshold()) == found


@pytest.mark.timeout(60)
def test_thresholds_changed_during_a_burst_are_kept(clocked: Engine, clock: ManualClock) -> None:
    batch = _held_burst(clocked)
    gc.set_threshold(500, 5, 20)
    _release(clocked, batch)
    _idle(clocked, clock)
    assert not COLLECTOR.holding and gc.get_threshold() == (500, 5, 20)


@pytest.mark.timeout(60)
def test_a_burst_past_max_held_gives_back_and_waits_for_a_full_pass(
        clocked: Engine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    held_for = [0.0]  # the collector's own clock, moved by hand
    passes = [0]  # full collections made, as the collector counts them
    monkeypatch.setattr(COLLECTOR, "clock", lambda: held_for[0])
    monkeypatch.setattr(_collector, "_full_collections", lambda: passes[0])
    batch = _held_burst(clocked)
    assert COLLECTOR.holding
    held_for[0] = MAX_HELD
    clock.advance(CHECK_EVERY)
    assert not COLLECTOR.holding and _oldest() == 10  # still in the burst
    clock.advance(10 * CHECK_EVERY)  # no full pass yet: no new hold
    assert not COLLECTOR.holding
    passes[0] += 1  # a full pass: what the burst put off is collected ...
    clock.advance(CHECK_EVERY)  # ... and the burst may put them off again
    assert COLLECTOR.holding and _oldest() == HELD
    _release(clocked, batch)
    _idle(clocked, clock)
    assert not COLLECTOR.holding


@pytest.mark.timeout(60)
def test_a_burst_ends_when_quiet_though_runs_trickle_on(
        clocked: Engine, clock: ManualClock) -> None:
    """A few runs in flight all the time (a poll, a slow loop) do not keep a burst going."""
    _release(clocked, _held_burst(clocked))
    trickle = _held_burst(clocked, QUIET_RUNS - 1, name="trickle")
    _idle(clocked, clock)
    assert not COLLECTOR.holding and _oldest() == 10
    _release(clocked, trickle, name="trickle")


@pytest.mark.timeout(60)
def test_a_failed_start_that_began_a_burst_gives_the_collector_back(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery adopted a burst's worth of runs left queued, then start-up failed."""
    with Engine(store=str(db_path)) as eng:
        _held_burst(eng)
    assert not COLLECTOR.holding

    def broken(self: Any) -> None:
        raise RuntimeError("the schedules could not be restored")

    monkeypatch.setattr(ScheduleBook, "restore", broken)
    with pytest.raises(RuntimeError, match="schedules"):
        Engine(store=str(db_path))
    assert not COLLECTOR.holding and _oldest() == 10


@pytest.mark.timeout(60)
def test_the_hold_lasts_until_the_last_engine_in_a_burst_is_idle(
        clocked: Engine, clock: ManualClock, tmp_path: Path) -> None:
    other_clock = ManualClock()
    with Engine(store=str(tmp_path / "other" / "runs.db"), clock=other_clock) as other:
        mine = _held_burst(clocked)
        theirs = _held_burst(other)
        _release(clocked, mine)
        _idle(clocked, clock)
        assert COLLECTOR.holding  # the other engine's burst is still in flight
        _release(other, theirs)
        _idle(other, other_clock)
        assert not COLLECTOR.holding and _oldest() == 10


@pytest.mark.timeout(60)
def test_closing_an_engine_in_a_burst_gives_the_collector_back(db_path: Path) -> None:
    eng = Engine(store=str(db_path))
    _held_burst(eng)
    assert COLLECTOR.holding
    eng.close()
    assert not COLLECTOR.holding and _oldest() == 10


@pytest.mark.timeout(60)
def test_a_burst_whose_runs_are_all_withdrawn_ends_with_them(
        clocked: Engine, clock: ManualClock) -> None:
    """Runs the store refuses never finish; the last of them out of flight ends the burst."""
    _noop_task(clocked, "work")
    defn = clocked.registry.require("work")
    bad_payload = '"report-\udcff.csv"'  # encoded JSON SQLite refuses (a lone surrogate)

    async def from_loop() -> list[str]:
        ids = [clocked.trigger_encoded(defn, bad_payload, {}).id for _ in range(BURST_RUNS)]
        assert COLLECTOR.holding  # in flight, their commit still to come
        return ids

    ids = clocked.runtime.call(from_loop)
    with pytest.raises(nbtasks.StoreError, match="could not be recorded"):
        clocked.wait_result(ids[-1], timeout=30)
    _idle(clocked, clock)
    assert not COLLECTOR.holding and _oldest() == 10


@pytest.mark.timeout(60)
def test_a_child_forked_in_a_burst_is_in_none(engine: Engine) -> None:
    """None of the parent's engines run in a child: its collector is its own again."""
    batch = _held_burst(engine)
    assert COLLECTOR.holding
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        os._exit(0 if not COLLECTOR.holding and _oldest() == 10 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert COLLECTOR.holding and _oldest() == HELD  # the parent's burst goes on
    _release(engine, batch)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_defer_gc_that_is_not_a_bool_is_refused(db_path: Path, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"Engine: defer_gc must be True or False"):
        Engine(store=str(db_path), defer_gc=value)
    with pytest.raises(ConfigurationError, match=r"configure: defer_gc must be True or False"):
        nbtasks.configure(defer_gc=value)
    assert not db_path.exists()  # refused before the store was made


@pytest.mark.timeout(30)
def test_configure_defer_gc_reaches_the_default_engine() -> None:
    from nbtasks._configure import default_engine

    nbtasks.configure(defer_gc=False)
    assert default_engine().config.defer_gc is False


def _stream(engine: Engine, task: nbtasks.Task[int, None], n: int, *, every: int = 100,
            clock: ManualClock | None = None, step: float = 0.0) -> int:
    """`n` runs triggered `every` at a time, each group finished before the next (so few are
    ever in flight); `clock` moves `step` seconds between groups. Returns the most in flight."""
    most = 0
    for start in range(0, n, every):
        handles = [task.trigger(i) for i in range(start, min(start + every, n))]
        most = max(most, len(engine.scheduler.active))
        assert all(r.ok for r in engine.wait_results([h.id for h in handles], timeout=60))
        if clock is not None and step:
            clock.advance(step)
    return most


@pytest.mark.timeout(120)
def test_a_stream_of_quick_runs_is_a_burst_though_few_are_in_flight(
        clocked: Engine, clock: ManualClock) -> None:
    """A cell's trigger() loop: runs done as fast as they come, never many at once."""
    task = _noop_task(clocked, "stream")
    most = _stream(clocked, task, BURST_RUNS + 2 * ARRIVALS_STRIDE)  # within one clock reading
    assert most <= 100 < BURST_RUNS  # so it is the arrivals that began it
    assert COLLECTOR.holding and _oldest() == HELD
    for _ in range(int(2 * IDLE_GRACE / CHECK_EVERY)):  # the stream goes on past IDLE_GRACE
        _stream(clocked, task, QUIET_RUNS)
        clock.advance(CHECK_EVERY)
    assert COLLECTOR.holding
    _idle(clocked, clock)  # the stream stops: nothing in flight, nothing arriving
    assert not COLLECTOR.holding and _oldest() == 10


@pytest.mark.timeout(120)
def test_as_many_runs_arriving_slowly_are_no_burst(clocked: Engine, clock: ManualClock) -> None:
    """The same arrivals spread out (fewer than BURST_RUNS in any CHECK_EVERY) hold nothing."""
    task = _noop_task(clocked, "slow")
    _stream(clocked, task, BURST_RUNS + 4 * ARRIVALS_STRIDE, clock=clock,
            step=CHECK_EVERY * 0.4)  # 100 runs per 0.4 of a window: about 250 per window
    assert not COLLECTOR.holding and _oldest() == 10


def _gather(task: nbtasks.Task[int, None], n: int) -> None:
    async def go() -> None:
        handles = await asyncio.gather(*(task.trigger_async(i) for i in range(n)))
        assert all(r.ok for r in await asyncio.gather(*handles))

    asyncio.run(go())


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("calls", "defer_gc", "held"), [
    (BURST_RUNS, True, True), (BURST_RUNS - 1, True, False), (BURST_RUNS, False, False)])
def test_gathered_calls_hold_the_collector_from_their_own_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calls: int, defer_gc: bool,
        held: bool) -> None:
    """`trigger_async` calls gathered in one turn are a burst before the engine has any of
    them: the collector is held when their first part is committed, and given back once
    they and their runs are done."""
    clock = ManualClock()
    with Engine(store=str(tmp_path / "runs.db"), clock=clock, defer_gc=defer_gc) as eng:
        task = _noop_task(eng, "gathered")
        seen: list[bool] = []
        commit = eng._commit_new

        def spy(runs: list[Any]) -> None:
            seen.append(COLLECTOR.holding)
            commit(runs)

        monkeypatch.setattr(eng, "_commit_new", spy)
        _gather(task, calls)
        assert seen[0] is held  # the first part: none of its runs reached the engine yet
        _idle(eng, clock)
        assert not COLLECTOR.holding and _oldest() == 10


@pytest.mark.timeout(60)
def test_a_collection_that_came_due_in_a_burst_is_made_at_its_quiet_end(
        clocked: Engine, clock: ManualClock) -> None:
    """Left to CPython it would set off at the next stretch of allocation: inside the next
    burst, most often. It is made once the burst is quiet instead."""
    batch = _held_burst(clocked)
    before = _full_passes()
    kept = _allocate_a_full_pass_worth()  # a full collection comes due, and is put off
    assert _full_passes() == before and gc.get_count()[2] >= 10
    _release(clocked, batch)
    _idle(clocked, clock)
    assert not COLLECTOR.holding and _full_passes() == before + 1  # made at the quiet end
    del kept


@pytest.mark.timeout(60)
def test_a_burst_that_put_nothing_off_makes_no_collection_at_its_end(
        clocked: Engine, clock: ManualClock) -> None:
    gc.collect()  # the oldest generation's count starts from 0
    batch = _held_burst(clocked)
    before = _full_passes()
    _release(clocked, batch)
    assert gc.get_count()[2] < 10  # nothing came due: no more middle passes than its threshold
    _idle(clocked, clock)
    assert not COLLECTOR.holding and _full_passes() == before
