"""Retry arithmetic (Trigger.dev's formula and table) and the retry policy as the engine applies it."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from nbtasks import Engine, RetryOptions, RunStatus, next_delay
from nbtasks._retry import decide
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]

# Trigger.dev's published retry table, randomize=False: (options, delays after attempts 1.., total wait).
TABLE: list[tuple[str, dict[str, Any], list[int | None]]] = [
    ("defaults", {}, [1000, 2000, None]),
    ("cli-template", {"max_timeout_in_ms": 10000}, [1000, 2000, None]),
    ("docs-example", {"max_attempts": 10, "factor": 1.8, "min_timeout_in_ms": 500,
                      "max_timeout_in_ms": 30000},
     [500, 900, 1620, 2916, 5249, 9448, 17006, 30000, 30000, None]),
    ("six-capped", {"max_attempts": 6, "max_timeout_in_ms": 10000},
     [1000, 2000, 4000, 8000, 10000, None]),
    ("flat", {"max_attempts": 4, "factor": 1, "min_timeout_in_ms": 5000},
     [5000, 5000, 5000, None]),
    ("retry-fetch", {"max_attempts": 10, "max_timeout_in_ms": 30000},
     [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, None]),
    ("ten-defaults", {"max_attempts": 10},
     [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, None]),
    ("rounding", {"max_attempts": 5, "factor": 1.5, "min_timeout_in_ms": 375},
     [375, 563, 844, 1266, None]),
    ("one-attempt", {"max_attempts": 1}, [None]),
    ("zero-min", {"max_attempts": 3, "min_timeout_in_ms": 0}, [0, 0, None]),
]
TOTALS = {"defaults": 3000, "cli-template": 3000, "docs-example": 97639, "six-capped": 25000,
          "flat": 15000, "retry-fetch": 151000, "ten-defaults": 243000, "rounding": 3048,
          "one-attempt": 0, "zero-min": 0}


@pytest.mark.parametrize(("name", "options", "delays"), TABLE, ids=[t[0] for t in TABLE])
def test_next_delay_matches_the_reference_table(name: str, options: dict[str, Any],
                                                delays: list[int | None]) -> None:
    opts = RetryOptions(**{**options, "randomize": False})
    got = [next_delay(opts, a) for a in range(1, len(delays) + 1)]
    assert got == delays
    assert sum(d for d in got if d is not None) == TOTALS[name]
    assert next_delay(opts, len(delays) + 5) is None  # past max_attempts: never a retry


def test_half_up_rounding_not_bankers() -> None:
    # 375 * 1.5 = 562.5 -> 563 (Python's round() would give 562).
    assert next_delay(RetryOptions(factor=1.5, min_timeout_in_ms=375, randomize=False), 2) == 563
    # 2.5 -> 3, 3.5 -> 4: half-up at both parities.
    assert next_delay(RetryOptions(factor=1, min_timeout_in_ms=1, randomize=True), 1, 1.5) == 3
    assert next_delay(RetryOptions(max_attempts=5, factor=2.5, min_timeout_in_ms=1,
                                   randomize=False), 2) == 3


@pytest.mark.parametrize(("attempt", "low", "high"), [(1, 1000, 2000), (2, 2000, 4000)])
def test_randomized_delays_stay_in_bounds(attempt: int, low: int, high: int) -> None:
    opts = RetryOptions()
    assert opts.randomize is True
    assert next_delay(opts, attempt, 0.0) == low
    assert next_delay(opts, attempt, 0.9999999) == high  # inclusive upper bound from rounding
    rng = random.Random(7)
    samples = {next_delay(opts, attempt, rng.random()) for _ in range(2000)}
    assert all(d is not None and low <= d <= high for d in samples)
    assert len(samples) > 100  # really random, not a constant
    assert next_delay(opts, 3) is None


def test_randomize_is_capped_after_jitter() -> None:
    opts = RetryOptions(max_attempts=10, max_timeout_in_ms=1500)
    assert next_delay(opts, 1, 0.9) == 1500


def test_decide_enforces_max_attempts_for_explicit_times() -> None:
    opts = RetryOptions(max_attempts=2, randomize=False)
    err = RuntimeError("x")
    assert decide(opts, 1, err, 100.0, {"retry_delay_in_ms": 500}).retry_at == 100.5
    assert decide(opts, 2, err, 100.0, {"retry_delay_in_ms": 500}).retry_at is None
    assert decide(opts, 1, err, 100.0, None).retry_at == 101.0
    assert decide(opts, 2, err, 100.0, None).retry_at is None
    assert decide(None, 1, err, 100.0, None).retry_at is None
    custom = {"retry": {"max_attempts": 9, "min_timeout_in_ms": 250, "randomize": False}}
    assert decide(opts, 1, err, 100.0, custom).retry_at == 100.25
    assert decide(opts, 2, err, 100.0, custom).retry_at is None  # the run's cap still holds


def _always_fails(calls: list[int]) -> Callable[[Any, Any], Any]:
    def run(payload: Any, ctx: Any) -> None:
        calls.append(ctx.attempt.number)
        raise RuntimeError("nope")

    return run


def test_default_retry_is_three_randomized_attempts(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    calls: list[int] = []
    t = clocked.task(id="defaults", run=_always_fails(calls))
    handle = t.trigger(None)
    waits = []
    for low, high in ((1000, 2000), (2000, 4000)):
        wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
        run = clocked.runs.retrieve(handle.id)
        assert run.delay_until is not None
        wait_ms = round((run.delay_until.timestamp() - clock.now()) * 1000)
        assert low <= wait_ms <= high
        waits.append(wait_ms)
        clock.advance(wait_ms / 1000)
    assert handle.wait(timeout=10).status is RunStatus.FAILED
    assert calls == [1, 2, 3]


def test_engine_default_retry_applies_to_tasks_without_their_own(db_path: Any) -> None:
    with Engine(store=str(db_path), retry={"max_attempts": 2, "min_timeout_in_ms": 1}) as eng:
        calls: list[int] = []
        assert eng.task(id="eng-default", run=_always_fails(calls)).trigger(None).wait(10)
        assert calls == [1, 2]
        eng.configure(retry=None)
        calls.clear()
        eng.task(id="eng-none", run=_always_fails(calls)).trigger(None).wait(10)
        assert calls == [1]


def test_retry_none_disables_retries(engine: Engine) -> None:
    calls: list[int] = []
    result = engine.task(id="once", run=_always_fails(calls), retry=None).trigger(None).wait(10)
    assert result.status is RunStatus.FAILED and calls == [1]


@pytest.mark.parametrize(("override", "attempts"), [(2, 2), (1, 1), (0, 4)])
def test_trigger_max_attempts_overrides_the_task(engine: Engine, override: int,
                                                 attempts: int) -> None:
    calls: list[int] = []
    t = engine.task(id=f"override-{override}", run=_always_fails(calls),
                    retry={"max_attempts": 4, "min_timeout_in_ms": 1})
    assert not t.trigger(None, max_attempts=override).wait(timeout=10).ok
    assert calls == list(range(1, attempts + 1))  # 0 is ignored, as in the reference


def test_zero_delay_retries_immediately_even_on_a_manual_clock(clocked: Engine) -> None:
    calls: list[int] = []
    t = clocked.task(id="immediate", run=_always_fails(calls),
                     retry={"max_attempts": 3, "min_timeout_in_ms": 0})
    assert t.trigger(None).wait(timeout=10).status is RunStatus.FAILED
    assert calls == [1, 2, 3]


def test_retries_of_one_run_are_recorded_as_attempts(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    def run(payload: Any, ctx: Any) -> str:
        if ctx.attempt.number < 3:
            raise ValueError(f"bad {ctx.attempt.number}")
        return "third time lucky"

    t = clocked.task(id="lucky", run=run,
                     retry={"max_attempts": 3, "min_timeout_in_ms": 1000, "randomize": False})
    handle = t.trigger(None)
    t0 = clock.now()
    for delay in (1, 2):
        wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
        clock.advance(delay)
    assert handle.wait(timeout=10).output == "third time lucky"
    run_ = clocked.runs.retrieve(handle.id)
    assert run_.attempt_count == 3 and run_.error is None
    assert [(a.number, a.status) for a in run_.attempts] == [
        (1, "FAILED"), (2, "FAILED"), (3, "COMPLETED")]
    assert [a.error["message"] if a.error else None for a in run_.attempts] == [
        "bad 1", "bad 2", None]
    assert [a.started_at.timestamp() - t0 for a in run_.attempts if a.started_at] == [0, 1, 3]
