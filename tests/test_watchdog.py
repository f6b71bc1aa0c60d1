"""A body that blocks the engine loop is named; the engine's own stalls are nobody's fault.

Only the time spent inside an attempt's steps counts, so the warning names the task whose
async body blocked, never a run that merely happened to be executing while the engine was busy.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _helpers import Gate

import nbtasks
from nbtasks import ConfigurationError, Engine


def _logs(eng: Engine, run_id: str) -> list[tuple[str, str]]:
    eng.runs.retrieve(run_id)  # lets pending writes land
    return [(str(r[0]), str(r[1])) for r in eng.store.select(
        "SELECT level, message FROM logs WHERE run_id = ? ORDER BY ts", (run_id,))[1]]


def test_blocking_async_body_is_named(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    engine.configure(loop_block_warning=0.2)

    @engine.task(id="blocks-the-loop")
    async def blocks(payload: None, ctx: Any) -> str:
        time.sleep(0.6)  # noqa: ASYNC251 - the mistake being caught: blocking in async def
        return "done"

    with caplog.at_level(logging.WARNING, logger="nbtasks"):
        handle = blocks.trigger(None)
        assert handle.wait(timeout=10).output == "done"
    warnings = [m for level, m in _logs(engine, handle.id) if level == "warn"]
    assert len(warnings) == 1
    # At least the 0.6 s the body slept; more on a loaded host (the step is timed by the wall).
    blocked = re.search(r"engine loop was blocked for (\d+\.\d) s", warnings[0])
    assert blocked is not None and float(blocked.group(1)) >= 0.6
    assert "plain def" in warnings[0] and "'blocks-the-loop'" in warnings[0]
    assert any(handle.id in r.getMessage() and "'blocks-the-loop'" in r.getMessage()
               for r in caplog.records)
    assert engine.scheduler.watch.stalls == 1


def test_only_the_body_that_blocks_is_named(engine: Engine) -> None:
    """Two runs execute at once; one blocks. The other's log stays clean."""
    engine.configure(loop_block_warning=0.2)
    gate = Gate(engine)

    @engine.task(id="polite")
    async def polite(payload: None, ctx: Any) -> None:
        await gate.wait()

    @engine.task(id="rude")
    async def rude(payload: None, ctx: Any) -> None:
        time.sleep(0.5)  # noqa: ASYNC251 - the mistake being caught

    waiting = polite.trigger(None)
    blocking = rude.trigger(None)
    blocking.wait(timeout=10)
    gate.open()
    waiting.wait(timeout=10)
    assert [m for level, m in _logs(engine, blocking.id) if level == "warn"]
    assert not [m for level, m in _logs(engine, waiting.id) if level == "warn"]
    assert engine.scheduler.watch.stalls == 1


def test_an_engine_stall_is_not_blamed_on_the_runs_executing(
        engine: Engine, caplog: pytest.LogCaptureFixture,
        wait_status: Callable[..., nbtasks.RunStatus]) -> None:
    """The loop held by something that is no task body: no run gets the warning."""
    engine.configure(loop_block_warning=0.2)
    gate = Gate(engine)

    @engine.task(id="innocent")
    async def innocent(payload: None, ctx: Any) -> None:
        await gate.wait()

    with caplog.at_level(logging.WARNING, logger="nbtasks"):
        handle = innocent.trigger(None)
        wait_status(engine, handle.id, nbtasks.RunStatus.EXECUTING)
        held = threading.Event()

        def engine_work() -> None:  # stands for the engine's own work: not inside any attempt
            held.set()
            time.sleep(0.6)

        engine.runtime.loop.call_soon_threadsafe(engine_work)
        assert held.wait(10)
        gate.open()
        assert handle.wait(timeout=10).ok
    assert not [m for level, m in _logs(engine, handle.id) if level == "warn"]
    assert not [r for r in caplog.records if "blocked" in r.getMessage()]
    assert engine.scheduler.watch.stalls == 0


def test_awaiting_bodies_raise_no_warning(engine: Engine) -> None:
    engine.configure(loop_block_warning=0.2)

    @engine.task(id="awaits")
    async def awaits(payload: None, ctx: Any) -> None:
        import asyncio

        await asyncio.sleep(0.5)

    handle = awaits.trigger(None)
    handle.wait(timeout=10)
    assert engine.scheduler.watch.stalls == 0
    assert not [m for level, m in _logs(engine, handle.id) if level == "warn"]


def test_no_timer_while_idle(engine: Engine) -> None:
    engine.task(id="quick", run=lambda p, ctx: p).trigger(1).wait(timeout=10)
    deadline = time.monotonic() + 5
    while engine.scheduler.watch._handle is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.scheduler.watch._handle is None


def test_bad_threshold_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="loop_block_warning"):
        nbtasks.configure(loop_block_warning=-1)
    with pytest.raises(ConfigurationError, match="loop_block_warning"):
        nbtasks.configure(loop_block_warning="soon")
