"""Waiting on runs: odd timeouts are refused or understood, and a finished run answers at once.

`handle.wait(timeout=0)` on a finished run returns its Result; `timeout=math.inf` (or any
value past what a timer can hold) means "no limit" instead of an OverflowError; a negative,
NaN or non-number timeout is a ConfigurationError. A finished run's `wait()`, `await` and
`status` answer without the engine thread: they work while its loop is stuck.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from nbtasks import ConfigurationError, Engine, RunStatus


@contextmanager
def loop_stuck(eng: Engine) -> Iterator[None]:
    """The engine loop's thread is held until the block exits."""
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        held.set()
        release.wait(60)

    eng.runtime.loop.call_soon_threadsafe(hold)
    assert held.wait(10)
    try:
        yield
    finally:
        release.set()


def _finished_handles(eng: Engine, n: int = 3) -> list[Any]:
    """Handles of finished runs that have not cached anything yet (the batch waited for them)."""
    task = eng.task(id="echo", run=lambda payload, ctx: payload)
    batch = task.batch_trigger(list(range(n)))
    assert [r.output for r in batch.wait(timeout=30)] == list(range(n))
    return list(batch.runs)


def test_wait_with_timeout_zero_on_a_finished_run_returns_its_result(engine: Engine) -> None:
    handles = _finished_handles(engine)
    assert [h.wait(timeout=0).output for h in handles] == [0, 1, 2]
    assert handles[0].wait(timeout=0.0).ok


def test_batch_wait_with_timeout_zero_on_finished_runs(engine: Engine) -> None:
    task = engine.task(id="echo", run=lambda payload, ctx: payload)
    batch = task.batch_trigger([1, 2])
    batch.wait(timeout=30)
    assert [r.output for r in batch.wait(timeout=0)] == [1, 2]


def test_timeout_zero_inside_a_sync_body_on_a_finished_child(engine: Engine) -> None:
    child = engine.task(id="child", run=lambda payload, ctx: payload + 1)

    def parent(payload: int, ctx: Any) -> int:
        h = child.trigger(payload)
        h.wait(timeout=30)
        again = engine.runs.retrieve(h.id)  # the row is final: a fresh look agrees
        assert again.status is RunStatus.COMPLETED
        return int(child_handle_of(h.id).wait(timeout=0).output or 0)

    def child_handle_of(run_id: str) -> Any:
        from nbtasks._handles import RunHandle

        return RunHandle(engine, run_id, "child")

    par = engine.task(id="parent", run=parent)
    assert par.trigger(41).wait(timeout=30).output == 42


@pytest.mark.parametrize("forever", [math.inf, 1e300, 10**30])
def test_an_infinite_timeout_means_no_limit(engine: Engine, forever: float) -> None:
    gate = threading.Event()
    task = engine.task(id="gated", run=lambda payload, ctx: gate.wait(30) and payload)
    handle = task.trigger(5)
    out: list[Any] = []
    waiter = threading.Thread(target=lambda: out.append(_try(lambda: handle.wait(forever))))
    waiter.start()
    gate.set()
    waiter.join(30)
    assert out and not isinstance(out[0], BaseException), out
    assert out[0].output == 5
    assert handle.wait(timeout=forever).output == 5  # finished: also fine
    batch = task.batch_trigger([1])
    assert [r.output for r in batch.wait(timeout=forever)] == [1]


def _try(fn: Any) -> Any:
    try:
        return fn()
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, -math.inf, "3", True, [1]])
def test_a_nonsense_timeout_is_a_configuration_error(engine: Engine, bad: Any) -> None:
    gate = threading.Event()
    task = engine.task(id="gated", run=lambda payload, ctx: gate.wait(30))
    handle = task.trigger(1)
    batch = task.batch_trigger([1])
    try:
        with pytest.raises(ConfigurationError, match="timeout"):
            handle.wait(timeout=bad)
        with pytest.raises(ConfigurationError, match="timeout"):
            batch.wait(timeout=bad)
        # The run went on untouched (it may not have been dispatched yet: that follows the commit).
        assert handle.status in (RunStatus.QUEUED, RunStatus.EXECUTING)
    finally:
        gate.set()
    assert handle.wait(timeout=30).ok
    finished = _finished_handles(engine, 1)[0]
    with pytest.raises(ConfigurationError, match="timeout"):  # even when it could answer
        finished.wait(timeout=bad)


def test_a_finished_run_answers_while_the_engine_loop_is_stuck(engine: Engine) -> None:
    handles = _finished_handles(engine)
    with loop_stuck(engine):
        assert handles[0].status is RunStatus.COMPLETED
        assert handles[1].wait(timeout=5).output == 1
        assert asyncio.run(_await(handles[2])).output == 2
        # and again, from what the handle keeps
        assert handles[1].wait(timeout=0).output == 1
        assert handles[1].status is RunStatus.COMPLETED


async def _await(handle: Any) -> Any:
    return await asyncio.wait_for(handle, 5)


def test_a_handle_given_the_runs_state_answers_from_it_once_durable(engine: Engine) -> None:
    """The engine may hand its live state of a run to the handle: no store read at all then."""
    from nbtasks._handles import RunHandle

    gate = threading.Event()
    task = engine.task(id="gated", run=lambda payload, ctx: gate.wait(30) and payload)
    first = task.trigger(9)
    state = first._run  # trigger() hands its handle the engine's state of the new run
    assert state is not None and state.id == first.id
    handle: RunHandle[Any] = RunHandle(engine, first.id, "gated", run=state)
    assert handle.status is RunStatus.EXECUTING or handle.status is RunStatus.QUEUED
    with pytest.raises(Exception, match="not final"):
        handle.wait(timeout=0)
    gate.set()
    assert first.wait(timeout=30).output == 9
    engine.close()  # from here on, an answer can only come from the state it was given
    assert handle.wait(timeout=0).output == 9
    assert handle.status is RunStatus.COMPLETED
