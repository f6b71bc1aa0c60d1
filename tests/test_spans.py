"""`logger.trace()` spans: sync and async, nested, in a failing attempt, in a worker process, and
`runs.spans_dataframe()` on an empty and a full store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import nbtasks
from nbtasks import ConfigurationError, Engine, RunStatus
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(60)


def spans(eng: Engine, run_id: str) -> pd.DataFrame:
    return eng.runs.spans_dataframe(run_id=run_id)


def test_async_spans_nest_and_record_times_status_and_attributes(
        clocked: Engine, clock: ManualClock, wait_status: Callable[..., RunStatus]) -> None:
    t0 = clock.now()

    @clocked.task(id="traced")
    async def traced(payload: Any, ctx: Any) -> int:
        async with nbtasks.logger.trace("load", source="s3") as load:
            await nbtasks.wait.for_(seconds=5)  # the manual clock moves 5 s inside the span
            with nbtasks.logger.trace("parse", fmt="csv"):
                pass
            load.set_attribute("rows", 3)
        return 1

    handle = traced.trigger(None)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    clock.advance(5)
    assert handle.wait(timeout=10).ok
    df = spans(clocked, handle.id)
    assert list(df.name) == ["load", "parse"]
    load, parse = df.iloc[0], df.iloc[1]
    assert load.parent_id is None or pd.isna(load.parent_id)
    assert parse.parent_id == load.span_id
    assert list(df.status) == ["ok", "ok"] and list(df.attempt) == [1, 1]
    assert load.attributes == {"source": "s3", "rows": 3}
    assert parse.attributes == {"fmt": "csv"}
    assert load.start.timestamp() == pytest.approx(t0)
    assert load.duration_ms == pytest.approx(5000)
    assert load.start <= parse.start <= parse.end <= load.end


def test_sync_body_spans_and_gathered_async_spans_are_siblings(engine: Engine) -> None:
    @engine.task(id="sync-traced")
    def sync_traced(payload: Any, ctx: Any) -> None:
        with nbtasks.logger.trace("outer"), nbtasks.logger.trace("inner", n=1):
            pass

    @engine.task(id="gathered")
    async def gathered(payload: Any, ctx: Any) -> None:
        async def leg(i: int) -> None:
            async with nbtasks.logger.trace(f"leg-{i}"):
                await asyncio.sleep(0)

        async with nbtasks.logger.trace("fan-out"):
            await asyncio.gather(leg(1), leg(2))

    h1 = sync_traced.trigger(None)
    h2 = gathered.trigger(None)
    assert h1.wait(timeout=10).ok and h2.wait(timeout=10).ok
    df = spans(engine, h1.id)
    assert list(df.name) == ["outer", "inner"]
    assert df.parent_id.iloc[1] == df.span_id.iloc[0]
    df = spans(engine, h2.id).set_index("name")
    assert df.loc["leg-1", "parent_id"] == df.loc["leg-2", "parent_id"] == df.loc["fan-out",
                                                                                  "span_id"]


def test_a_span_in_a_failing_attempt_records_the_error_and_each_attempt(engine: Engine) -> None:
    @engine.task(id="flaky-traced", retry={"max_attempts": 2, "min_timeout_in_ms": 1,
                                           "max_timeout_in_ms": 1, "randomize": False})
    async def flaky(payload: Any, ctx: Any) -> str:
        async with nbtasks.logger.trace("step", attempt=ctx.attempt.number):
            if ctx.attempt.number == 1:
                raise ValueError("bad row 7")
        return "ok"

    handle = flaky.trigger(None)
    assert handle.wait(timeout=10).output == "ok"
    df = spans(engine, handle.id)
    assert list(df.attempt) == [1, 2]
    assert list(df.status) == ["error", "ok"]
    assert df.error_type.iloc[0] == "ValueError" and df.error_message.iloc[0] == "bad row 7"
    assert pd.isna(df.error_type.iloc[1])


def test_spans_outside_a_run_only_time_the_block_and_bad_names_fail(engine: Engine) -> None:
    with nbtasks.logger.trace("local") as span:
        pass
    assert span.status == "ok" and span.end is not None and span.start is not None
    assert len(engine.runs.spans_dataframe()) == 0
    with pytest.raises(ConfigurationError, match="non-empty str"):
        nbtasks.logger.trace("")
    with pytest.raises(ConfigurationError, match="already entered"), span:
        pass


def test_spans_dataframe_columns_and_dtypes_empty_and_full(engine: Engine) -> None:
    empty = engine.runs.spans_dataframe()
    assert list(empty.columns) == [
        "run_id", "task_id", "attempt", "span_id", "parent_id", "name", "status", "start", "end",
        "duration_ms", "error_type", "error_message", "attributes"]
    assert len(empty) == 0

    @engine.task(id="many")
    def many(payload: int, ctx: Any) -> None:
        for i in range(payload):
            with nbtasks.logger.trace("item", i=i):
                pass

    handles = [many.trigger(n) for n in (1, 3)]
    assert all(h.wait(timeout=10).ok for h in handles)
    full = engine.runs.spans_dataframe()
    assert len(full) == 4
    for df in (empty, full):
        assert isinstance(df.start.dtype, pd.DatetimeTZDtype) and str(df.start.dtype.tz) == "UTC"
        assert df.end.dtype == df.start.dtype == full.start.dtype
        assert df.duration_ms.dtype == "float64" and df.attempt.dtype == "int64"
        assert isinstance(df.name.dtype, pd.CategoricalDtype)
        assert isinstance(df.status.dtype, pd.CategoricalDtype)
    assert (full.duration_ms >= 0).all()
    assert sorted(a["i"] for a in full.attributes) == [0, 0, 1, 2]
    assert len(engine.runs.spans_dataframe(task_id="many", run_id=handles[1].id)) == 3
    # spans are log lines of their own level, so a log view can leave them out
    assert set(engine.runs.logs(handles[0].id).level) == {"span"}


def test_spans_in_a_worker_process_reach_the_kernel(
        process_engine: Callable[..., Engine]) -> None:
    eng = process_engine()

    @eng.task(id="remote-traced", machine="micro")
    def remote(payload: Any, ctx: Any) -> int:
        import os

        with nbtasks.logger.trace("in-worker", pid=os.getpid()), nbtasks.logger.trace("child"):
            pass
        return os.getpid()

    handle = remote.trigger(None)
    result = handle.wait(timeout=30)
    assert result.ok, result.error
    df = spans(eng, handle.id)
    assert list(df.name) == ["in-worker", "child"]
    assert df.attributes.iloc[0] == {"pid": result.output}
    assert df.parent_id.iloc[1] == df.span_id.iloc[0]
    assert list(df.status) == ["ok", "ok"]


def test_spans_survive_reopening_the_file(db_path: Path) -> None:
    with Engine(store=str(db_path)) as eng:
        @eng.task(id="durable-span")
        def durable(payload: Any, ctx: Any) -> None:
            with nbtasks.logger.trace("kept", k="v"):
                pass

        assert durable.trigger(None).wait(timeout=10).ok
    with Engine(store=str(db_path)) as again:
        df = again.runs.spans_dataframe()
        assert list(df.name) == ["kept"] and df.attributes.iloc[0] == {"k": "v"}
