"""Trigger options on the manual clock: delay, reschedule, ttl and max_duration."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nbtasks import ConfigurationError, Engine, RunStatus, Task
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]


def started_offset(eng: Engine, run_id: str, t0: float) -> float:
    run = eng.runs.retrieve(run_id)
    assert run.started_at is not None
    return run.started_at.timestamp() - t0


@pytest.fixture
def echo(clocked: Engine) -> Task[Any, Any]:
    @clocked.task(id="echo")
    async def echo(payload: Any, ctx: Any) -> Any:
        return payload

    return echo


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [("1h30m", 5400), ("90s", 90), ("1w2d", 9 * 86400), (90, 90), (2.5, 2.5),
     (timedelta(minutes=2), 120)],
)
def test_delay_waits_as_delayed(clocked: Engine, clock: ManualClock, echo: Task[Any, Any],
                                delay: Any, seconds: float) -> None:
    t0 = clock.now()
    handle = echo.trigger("later", delay=delay)
    run = clocked.runs.retrieve(handle.id)
    assert run.status is RunStatus.DELAYED and run.is_queued
    assert run.delay_until == datetime.fromtimestamp(t0 + seconds, UTC)
    clock.advance(seconds - 0.5)
    assert handle.status is RunStatus.DELAYED
    clock.advance(0.5)
    assert handle.wait(timeout=10).output == "later"
    assert started_offset(clocked, handle.id, t0) == seconds


def test_delay_to_a_datetime(clocked: Engine, clock: ManualClock, echo: Task[Any, Any]) -> None:
    t0 = clock.now()
    at = datetime.fromtimestamp(t0, UTC) + timedelta(hours=3)
    handle = echo.trigger(1, delay=at)
    assert handle.status is RunStatus.DELAYED
    clock.set(at)
    assert handle.wait(timeout=10).ok
    assert started_offset(clocked, handle.id, t0) == 3 * 3600


def test_a_past_date_means_no_delay(clocked: Engine, clock: ManualClock,
                                    echo: Task[Any, Any]) -> None:
    past = datetime.fromtimestamp(clock.now(), UTC) - timedelta(days=1)
    handle = echo.trigger(1, delay=past)
    assert handle.wait(timeout=10).ok  # no clock move needed
    assert clocked.runs.retrieve(handle.id).delay_until is None


def test_reschedule_a_delayed_run(clocked: Engine, clock: ManualClock,
                                  echo: Task[Any, Any]) -> None:
    t0 = clock.now()
    handle = echo.trigger(1, delay="1h")
    run = clocked.runs.reschedule(handle.id, delay="10m")
    assert run.status is RunStatus.DELAYED
    assert run.delay_until == datetime.fromtimestamp(t0 + 600, UTC)
    clock.advance(600)
    assert handle.wait(timeout=10).ok
    assert started_offset(clocked, handle.id, t0) == 600
    clock.advance(3600)  # the old timer was cancelled: nothing runs twice
    assert clocked.runs.retrieve(handle.id).attempt_count == 1


def test_reschedule_to_now_and_later(clocked: Engine, clock: ManualClock,
                                     echo: Task[Any, Any]) -> None:
    soon = echo.trigger(1, delay="1h")
    clocked.runs.reschedule(soon.id, delay="0s")  # now (a past date is refused: tests/faults)
    assert soon.wait(timeout=10).ok
    later = echo.trigger(2, delay="1m")
    clocked.runs.reschedule(later.id, delay="2h")
    clock.advance(60)
    assert later.status is RunStatus.DELAYED
    clock.advance(7200 - 60)
    assert later.wait(timeout=10).ok


def test_reschedule_rejects_runs_that_are_not_delayed(clocked: Engine,
                                                      echo: Task[Any, Any]) -> None:
    done = echo.trigger(1)
    done.wait(timeout=10)
    with pytest.raises(ConfigurationError, match="not delayed"):
        clocked.runs.reschedule(done.id, delay="1m")
    delayed = echo.trigger(1, delay="1m")
    with pytest.raises(ConfigurationError, match="not a duration"):
        clocked.runs.reschedule(delayed.id, delay="soonish")
    assert delayed.status is RunStatus.DELAYED


def test_ttl_expires_a_run_still_queued(clocked: Engine, clock: ManualClock,
                                        echo: Task[Any, Any]) -> None:
    clocked.queues.pause("task/echo")
    handle = echo.trigger(1, ttl="10m")
    clock.advance(599)
    assert handle.status is RunStatus.QUEUED
    clock.advance(1)
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.EXPIRED and not result.ok
    run = clocked.runs.retrieve(handle.id)
    assert run.is_completed and run.attempt_count == 0 and run.started_at is None
    clocked.queues.resume("task/echo")
    assert clocked.queues.retrieve("task/echo")["queued"] == 0  # never starts


@pytest.mark.parametrize("ttl", [0, "0s", None])
def test_ttl_zero_means_none(clocked: Engine, clock: ManualClock, echo: Task[Any, Any],
                             ttl: Any) -> None:
    clocked.queues.pause("task/echo")
    handle = echo.trigger(1, ttl=ttl)
    clock.advance(365 * 86400)
    assert handle.status is RunStatus.QUEUED
    clocked.queues.resume("task/echo")
    assert handle.wait(timeout=10).ok


def test_ttl_counts_from_the_end_of_the_delay(clocked: Engine, clock: ManualClock,
                                              echo: Task[Any, Any]) -> None:
    clocked.queues.pause("task/echo")
    handle = echo.trigger(1, delay="1h", ttl=60)
    clock.advance(3600 + 59)
    assert handle.status is RunStatus.QUEUED
    clock.advance(1)
    assert handle.wait(timeout=10).status is RunStatus.EXPIRED


def test_ttl_never_expires_a_run_that_started(clocked: Engine, clock: ManualClock,
                                              wait_status: WaitStatus) -> None:
    gate = threading.Event()

    @clocked.task(id="slow-start")
    def slow_start(payload: Any, ctx: Any) -> str:
        gate.wait(10)
        return "finished"

    handle = slow_start.trigger(None, ttl="1m")
    wait_status(clocked, handle.id, RunStatus.EXECUTING)
    clock.advance(3600)
    assert handle.status is RunStatus.EXECUTING
    gate.set()
    assert handle.wait(timeout=10).output == "finished"


def test_max_duration_times_out_an_async_body(clocked: Engine, clock: ManualClock,
                                              wait_status: WaitStatus) -> None:
    calls: list[str] = []
    cleaned = threading.Event()

    def cleanup(payload: Any, ctx: Any) -> None:
        calls.append("cleanup")
        cleaned.set()

    @clocked.task(id="too-slow", max_duration=30, retry={"max_attempts": 3},
                  on_failure=lambda p, e, c: calls.append("on_failure"), cleanup=cleanup)
    async def too_slow(payload: Any, ctx: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            calls.append("cancelled")
            raise

    handle = too_slow.trigger(None)
    wait_status(clocked, handle.id, RunStatus.EXECUTING)
    clock.advance(29)
    assert handle.status is RunStatus.EXECUTING
    clock.advance(1)
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.TIMED_OUT  # final at once, with no retry
    assert result.error is not None and result.error.type_name == "MaxDurationExceededError"
    assert isinstance(result.error, TimeoutError)
    assert "30s" in str(result.error)
    run = clocked.runs.retrieve(handle.id)
    assert run.attempt_count == 1 and run.is_completed and run.is_failed
    assert cleaned.wait(10)
    assert calls == ["cancelled", "cleanup"]  # the body is cancelled; no on_failure (ref. #1795)


def test_trigger_max_duration_overrides_the_task_and_stops_a_sync_body(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    seen: list[Any] = []
    finished = threading.Event()

    @clocked.task(id="sync-slow", max_duration=3600)
    def sync_slow(payload: Any, ctx: Any) -> str:
        seen.append(ctx.signal.wait(10))  # cooperative code sees the signal
        seen.append(ctx.signal.reason)
        finished.set()
        return "late"

    handle = sync_slow.trigger(None, max_duration=5)
    wait_status(clocked, handle.id, RunStatus.EXECUTING)
    clock.advance(5)
    assert handle.wait(timeout=10).status is RunStatus.TIMED_OUT
    assert finished.wait(10) and seen == [True, "timeout"]
    run = clocked.runs.retrieve(handle.id)
    assert run.status is RunStatus.TIMED_OUT and run.output is None  # the late result is dropped
    assert run.attempts[0].status == "FAILED"
