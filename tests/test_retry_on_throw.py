"""`nbtasks.retry.on_throw`: retry a block inside a run, waiting between tries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import nbtasks
from nbtasks import AbortTaskRunError, Engine, RunStatus
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]
FLAT = {"max_attempts": 3, "factor": 1, "min_timeout_in_ms": 1000, "randomize": False}


def test_on_throw_retries_with_waits_on_the_runs_clock(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    tries: list[tuple[int, int]] = []
    failed = [threading.Event(), threading.Event()]

    def flaky(attempt: int, max_attempts: int) -> str:
        tries.append((attempt, max_attempts))
        if attempt < 3:
            failed[attempt - 1].set()
            raise ConnectionError(f"try {attempt}")
        return f"page after {attempt} tries"

    @clocked.task(id="fetcher", retry=None)
    async def fetcher(payload: Any, ctx: Any) -> str:
        return await nbtasks.retry.on_throw(flaky, **FLAT)

    handle = fetcher.trigger(None)
    t0 = clock.now()
    for event in failed:
        assert event.wait(10)
        wait_status(clocked, handle.id, RunStatus.WAITING)  # the wait gives the slot back
        clock.advance(1)
    assert handle.wait(timeout=10).output == "page after 3 tries"
    assert tries == [(1, 3), (2, 3), (3, 3)]
    assert clock.now() - t0 == 2


def test_on_throw_reraises_the_last_error(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    failed = threading.Event()

    async def always() -> None:
        failed.set()
        raise TimeoutError("still down")

    @clocked.task(id="gives-up", retry=None)
    async def gives_up(payload: Any, ctx: Any) -> None:
        await nbtasks.retry.on_throw(always, max_attempts=2, min_timeout_in_ms=500,
                                     randomize=False)

    handle = gives_up.trigger(None)
    assert failed.wait(10)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    clock.advance(0.5)
    result = handle.wait(timeout=10)
    assert result.error is not None and result.error.type_name == "TimeoutError"
    assert str(result.error) == "still down"


def test_on_throw_does_not_retry_an_abort(engine: Engine) -> None:
    calls: list[int] = []

    def abort() -> None:
        calls.append(1)
        raise AbortTaskRunError("stop")

    @engine.task(id="aborts-inside", retry=None)
    async def aborts_inside(payload: Any, ctx: Any) -> None:
        await nbtasks.retry.on_throw(abort, max_attempts=5)

    result = aborts_inside.trigger(None).wait(timeout=10)
    assert not result.ok and str(result.error) == "stop" and calls == [1]


def test_on_throw_zero_delay_means_stop(engine: Engine) -> None:
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise ValueError("zero")

    @engine.task(id="zero-delay", retry=None)
    async def zero_delay(payload: Any, ctx: Any) -> None:
        await nbtasks.retry.on_throw(fails, max_attempts=5, min_timeout_in_ms=0)

    assert not zero_delay.trigger(None).wait(timeout=10).ok
    assert calls == [1]


def test_on_throw_rejects_bad_options(engine: Engine) -> None:
    @engine.task(id="bad-on-throw", retry=None)
    async def bad(payload: Any, ctx: Any) -> None:
        await nbtasks.retry.on_throw(lambda: None, maxAttempts=3)

    result = bad.trigger(None).wait(timeout=10)
    assert result.error is not None and result.error.type_name == "ConfigurationError"
    assert "maxAttempts" in str(result.error)


@pytest.mark.parametrize("value", ["plain", 0])
def test_on_throw_returns_the_value_first_time(engine: Engine, value: Any) -> None:
    @engine.task(id=f"first-time-{value}", retry=None)
    async def first_time(payload: Any, ctx: Any) -> Any:
        return await nbtasks.retry.on_throw(lambda: value, max_attempts=2)

    assert first_time.trigger(None).wait(timeout=10).output == value
