"""Values a datetime can't hold, non-finite numbers and loose coercion are refused in the caller.

Each refusal is a ConfigurationError naming the option and the value, and the store's row
counts are unchanged: a run that was refused must leave no trace, and must not run.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _helpers import rows

import nbtasks
from nbtasks import ConfigurationError, Engine, RunStatus
from nbtasks.testing import ManualClock

INF = float("inf")
NAN = float("nan")


FAR = datetime(9999, 1, 1, tzinfo=UTC)

BAD_TRIGGER_OPTIONS: list[tuple[str, Any, str]] = [
    # option, value, what the message must show besides the option's name
    ("delay", "9999999w", "'9999999w'"),
    ("delay", 1e300, "1e+300"),
    ("delay", INF, "inf"),
    ("delay", 10**30, str(10**30)),
    ("delay", 10**400, "1000"),  # too big even for a float
    ("delay", NAN, "nan"),
    ("delay", timedelta(days=999_999_999), "days=999999999"),
    ("delay", FAR, "9999-01-01"),
    ("delay", True, "True"),
    ("delay", "10", "'10'"),
    ("ttl", "9999999w", "'9999999w'"),
    ("ttl", NAN, "nan"),
    ("ttl", INF, "inf"),
    ("ttl", True, "True"),
    ("idempotency_key_ttl", NAN, "nan"),
    ("max_attempts", True, "True"),
    ("max_attempts", "3", "'3'"),
    ("max_attempts", 3.0, "3.0"),
    ("max_duration", NAN, "nan"),
    ("max_duration", INF, "inf"),
    ("max_duration", True, "True"),
    ("max_duration", "10", "'10'"),
    ("max_duration", 1e300, "1e+300"),
    ("priority", NAN, "nan"),
    ("priority", INF, "inf"),
    ("priority", True, "True"),
    ("priority", "10", "'10'"),
]


@pytest.mark.parametrize(("option", "value", "shown"), BAD_TRIGGER_OPTIONS,
                         ids=[f"{o}={v!r}"[:40] for o, v, _ in BAD_TRIGGER_OPTIONS])
def test_bad_numbers_and_durations_are_refused_naming_option_and_value(
    engine: Engine, echo: Any, calls: list[Any], db_path: Path, option: str, value: Any,
    shown: str,
) -> None:
    options = {option: value}
    if option == "idempotency_key_ttl":
        options["idempotency_key"] = "k"
    before = rows(engine, db_path)
    for call in (lambda: echo.trigger(1, **options),
                 lambda: echo.batch_trigger([1, 2], **options),
                 lambda: asyncio.run(echo.trigger_and_wait(1, **options))):
        with pytest.raises(ConfigurationError) as info:
            call()
        assert option in str(info.value)
        assert shown in str(info.value)
    assert rows(engine, db_path) == before
    assert calls == []
    # The history stays readable: nothing odd was written.
    assert engine.runs.list() == []


def test_delay_of_true_is_not_one_second(clocked: Engine, clock: ManualClock) -> None:
    @clocked.task(id="t")
    async def t(payload: Any, ctx: Any) -> None:
        return None

    with pytest.raises(ConfigurationError, match="delay: expected a duration, got True"):
        t.trigger(None, delay=True)
    assert clocked.runs.count() == 0


def test_largest_accepted_delay_reads_back(clocked: Engine, clock: ManualClock) -> None:
    """Just inside the horizon: stored, listed and retrieved as a datetime."""

    @clocked.task(id="later")
    async def later(payload: Any, ctx: Any) -> None:
        return None

    handle = later.trigger(None, delay=f"{52 * 9}w")
    run = clocked.runs.retrieve(handle.id)
    assert run.status is RunStatus.DELAYED
    assert run.delay_until is not None and run.delay_until.year >= 2034
    assert [r.id for r in clocked.runs.list()] == [handle.id]


@pytest.mark.parametrize("timeout", ["9999999w", 1e300, INF, NAN, 10**30, True, "5"])
def test_token_timeouts_are_refused(engine: Engine, db_path: Path, timeout: Any) -> None:
    before = rows(engine, db_path)
    with pytest.raises(ConfigurationError, match=r"timeout") as info:
        engine.wait.create_token(timeout=timeout)
    assert repr(timeout)[:8] in str(info.value) or "duration" in str(info.value)
    assert rows(engine, db_path) == before
    assert engine.wait.list_tokens() == []


@pytest.mark.parametrize(("units", "shown"), [
    ({"seconds": NAN}, "seconds=nan"), ({"seconds": INF}, "seconds=inf"),
    ({"years": 11}, "years"), ({"weeks": 10**30}, "weeks="), ({"seconds": True}, "True"),
])
def test_wait_durations_are_refused(engine: Engine, units: dict[str, Any], shown: str) -> None:
    with pytest.raises(ConfigurationError, match=r"wait\.for_") as info:
        asyncio.run(engine.wait.for_(**units))
    assert shown in str(info.value)
    with pytest.raises(ConfigurationError, match=r"wait\.until"):
        asyncio.run(engine.wait.until(FAR))


@pytest.mark.parametrize("value", [NAN, INF, 0, -1, True, "10", 1e300])
def test_task_max_duration_is_checked_at_definition(engine: Engine, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_duration") as info:
        engine.task(id="t", run=lambda p, c: None, max_duration=value)
    assert repr(value) in str(info.value)
    assert "t" not in engine.registry.ids()


@pytest.mark.parametrize(("retry", "shown"), [
    ({"factor": INF}, "factor"), ({"factor": NAN}, "factor"), ({"factor": 20}, "factor"),
    ({"max_attempts": True}, "max_attempts"),
    ({"max_attempts": "3"}, "max_attempts"), ({"min_timeout_in_ms": 10**20}, "min_timeout_in_ms"),
    ({"randomize": "no"}, "randomize"),
])
def test_retry_options_are_strict(engine: Engine, retry: dict[str, Any], shown: str) -> None:
    """A factor of 20 would overflow the delay (20.0 ** 249) on a run with 250 attempts."""
    with pytest.raises(ConfigurationError, match=shown):
        engine.task(id="t", run=lambda p, c: None, retry=retry)
    with pytest.raises(ConfigurationError, match=shown):
        nbtasks.configure(retry=retry)


@pytest.mark.parametrize("value", [NAN, INF, True, "1", -1])
def test_loop_block_warning_is_checked(engine: Engine, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="loop_block_warning") as info:
        nbtasks.configure(loop_block_warning=value)
    assert repr(value) in str(info.value)
    with pytest.raises(ConfigurationError, match="loop_block_warning"):
        engine.configure(loop_block_warning=value)
    assert engine.config.loop_block_warning == 1.0


@pytest.mark.parametrize("value", [NAN, INF, True, "1", -1])
def test_an_engine_made_with_a_bad_loop_block_warning_is_refused_before_its_store(
        tmp_path: Path, value: Any) -> None:
    db = tmp_path / "never" / "runs.db"
    with pytest.raises(ConfigurationError, match=r"Engine: loop_block_warning .*got") as info:
        Engine(store=db, loop_block_warning=value)
    assert repr(value) in str(info.value)
    assert not db.parent.exists()


def test_reschedule_to_a_past_date_is_an_invalid_delay(clocked: Engine, clock: ManualClock,
                                                       calls: list[Any]) -> None:
    @clocked.task(id="later")
    async def later(payload: Any, ctx: Any) -> None:
        calls.append(payload)

    handle = later.trigger(1, delay="1h")
    past = datetime.fromtimestamp(clock.now() - 60, UTC)
    with pytest.raises(ConfigurationError, match="Invalid delay") as info:
        clocked.runs.reschedule(handle.id, delay=past)
    assert past.isoformat() in str(info.value)
    for bad in ("9999999w", NAN, True, FAR):
        with pytest.raises(ConfigurationError, match="delay"):
            clocked.runs.reschedule(handle.id, delay=bad)
    run = clocked.runs.retrieve(handle.id)
    assert run.status is RunStatus.DELAYED and calls == []
    assert run.delay_until == datetime.fromtimestamp(clock.now() + 3600, UTC)


def test_any_64_character_key_is_taken_as_already_hashed(engine: Engine, echo: Any) -> None:
    """Trigger.dev takes any 64-character string as a key it hashed already."""
    key = "Order-2026-01-01-customer-0042-" + "X" * 33  # 64 chars, not lowercase hex
    assert len(key) == 64
    first = echo.trigger(1, idempotency_key=key)
    first.wait(timeout=10)
    again = echo.trigger(2, idempotency_key=key)
    assert again.id == first.id and again.is_cached
    assert engine.runs.retrieve(first.id).idempotency_key == key
    # 63 characters: hashed (global scope), as before.
    short = engine.runs.retrieve(echo.trigger(3, idempotency_key=key[:63]).id)
    assert short.idempotency_key == nbtasks.idempotency_keys.create(key[:63], scope="global")
