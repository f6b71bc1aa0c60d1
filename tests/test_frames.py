"""History as DataFrames: runs.to_dataframe(), runs.attempts_dataframe(), runs.logs()."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import nbtasks
from nbtasks import ConfigurationError, Engine, RunStatus, frames
from nbtasks.executors import InlineExecutor
from nbtasks.testing import ManualClock

ATTEMPT_COLUMNS = ["run_id", "task_id", "attempt", "status", "started_at", "finished_at",
                   "duration_ms", "machine", "queue", "concurrency_key", "error_type",
                   "error_message", "tags"]
RETRY = {"max_attempts": 3, "min_timeout_in_ms": 1000, "factor": 1, "randomize": False}


def _settled(eng: Engine, run_ids: list[str]) -> None:
    """Block until none of `run_ids` is queued or executing (each is waiting, retrying or done)."""
    done = threading.Event()

    def check(_event: Any = None) -> None:
        active = eng.scheduler.active
        if all(i not in active or active[i].status not in (RunStatus.QUEUED, RunStatus.EXECUTING)
               for i in run_ids):
            done.set()

    unsubscribe = eng.subscribe(check)
    eng.on_loop(check)
    try:
        assert done.wait(10)
    finally:
        unsubscribe()


@pytest.fixture
def history(db_path: Path, clock: ManualClock) -> Iterator[tuple[Engine, dict[str, str]]]:
    """Three flaky runs (ok at attempt 1, 2, never), two timed runs and a logging one.

    Presets run inline here, so machines are recorded without worker processes.
    """
    eng = Engine(store=str(db_path), clock=clock, executor=InlineExecutor())

    @eng.task(id="flaky", retry=RETRY)
    async def flaky(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if ctx.attempt.number < p["ok_at"]:
            raise ValueError(f"boom {ctx.attempt.number}")
        return {"n": p["ok_at"]}

    @eng.task(id="timed")
    async def timed(p: dict[str, Any], ctx: Any) -> None:
        await eng.wait.for_(seconds=p["s"])

    @eng.task(id="chatty")
    def chatty(p: Any, ctx: Any) -> None:
        nbtasks.logger.info("hello", rows=3)
        nbtasks.logger.warn("careful")

    ids = {
        "ok1": flaky.trigger({"ok_at": 1}, tags=["nightly", "eu"]).id,
        "ok2": flaky.trigger({"ok_at": 2}, machine="micro", concurrency_key="user-1").id,
        "never": flaky.trigger({"ok_at": 9}).id,
    }
    # trigger() returns once the run is recorded, maybe before it starts: time moves on only
    # once each attempt started has ended (a retry timer set after the move would never fire).
    _settled(eng, list(ids.values()))
    clock.advance(1)
    _settled(eng, list(ids.values()))
    clock.advance(1)
    eng.wait_results(list(ids.values()), timeout=10)
    clock.advance(10)
    ids["t2"] = timed.trigger({"s": 2}, machine="small-1x").id
    ids["t4"] = timed.trigger({"s": 4}, machine="small-1x").id
    ids["chatty"] = chatty.trigger(None).id
    eng.wait_result(ids["chatty"], timeout=10)
    _settled(eng, [ids["t2"], ids["t4"]])
    clock.advance(2)
    eng.wait_result(ids["t2"], timeout=10)
    clock.advance(2)
    eng.wait_result(ids["t4"], timeout=10)
    try:
        yield eng, ids
    finally:
        eng.close()


def test_attempts_frame_has_the_columns_and_types(history: tuple[Engine, dict[str, str]]) -> None:
    eng, ids = history
    df = eng.runs.attempts_dataframe()
    assert list(df.columns) == ATTEMPT_COLUMNS
    assert len(df) == 1 + 2 + 3 + 1 + 1 + 1
    assert isinstance(df.status.dtype, pd.CategoricalDtype)
    assert isinstance(df.task_id.dtype, pd.CategoricalDtype)
    assert list(df.status.cat.categories) == [s.value for s in RunStatus]
    for col in ("started_at", "finished_at"):
        assert isinstance(df[col].dtype, pd.DatetimeTZDtype) and str(df[col].dt.tz) == "UTC"
    never = df[df.run_id == ids["never"]]
    assert never.attempt.tolist() == [1, 2, 3]
    assert never.status.tolist() == ["FAILED"] * 3
    assert never.error_type.tolist() == ["ValueError"] * 3
    assert never.error_message.tolist() == ["boom 1", "boom 2", "boom 3"]
    ok2 = df[df.run_id == ids["ok2"]]
    assert ok2.status.tolist() == ["FAILED", "COMPLETED"]
    assert ok2.machine.tolist() == ["micro", "micro"] and ok2.concurrency_key.iloc[0] == "user-1"
    assert pd.isna(ok2.error_type.iloc[1]) and pd.isna(ok2.error_message.iloc[1])
    assert df[df.run_id == ids["ok1"]].tags.iloc[0] == ("nightly", "eu")
    assert ok2.tags.iloc[0] == ()
    # Durations come from the recorded times: the timed runs waited 2 s and 4 s.
    timed = df[df.task_id == "timed"].set_index("run_id").duration_ms
    assert timed[ids["t2"]] == pytest.approx(2000) and timed[ids["t4"]] == pytest.approx(4000)
    assert df.groupby("machine", observed=True).duration_ms.median()["small-1x"] == \
        pytest.approx(3000)
    # In trigger order, then by attempt number.
    assert df.run_id.iloc[0] == ids["ok1"] and df.run_id.iloc[-1] == ids["chatty"]


def test_runs_frame(history: tuple[Engine, dict[str, str]], clock: ManualClock) -> None:
    eng, ids = history
    df = eng.runs.to_dataframe()
    assert len(df) == 6
    assert df.id.tolist() == list(ids.values())
    assert isinstance(df.status.dtype, pd.CategoricalDtype)
    assert isinstance(df.task_id.dtype, pd.CategoricalDtype)
    row = df.set_index("id")
    assert row.loc[ids["never"], "status"] == "FAILED"
    assert row.loc[ids["never"], "attempts"] == 3
    assert row.loc[ids["never"], "error_type"] == "ValueError"
    assert row.loc[ids["ok2"], "status"] == "COMPLETED" and row.loc[ids["ok2"], "attempts"] == 2
    assert str(row.created_at.dt.tz) == "UTC"
    rates = df.groupby("task_id", observed=True).status.apply(lambda s: (s == "FAILED").mean())
    assert rates["flaky"] == pytest.approx(1 / 3) and rates["timed"] == 0


def test_filters(history: tuple[Engine, dict[str, str]], clock: ManualClock) -> None:
    eng, ids = history
    runs = eng.runs
    assert runs.to_dataframe(task_id="timed").id.tolist() == [ids["t2"], ids["t4"]]
    assert runs.to_dataframe(status="FAILED").id.tolist() == [ids["never"]]
    assert runs.to_dataframe(tag="eu").id.tolist() == [ids["ok1"]]
    assert runs.to_dataframe(limit=2).id.tolist() == [ids["t4"], ids["chatty"]]
    since = datetime.fromtimestamp(clock.now() - 5, UTC)
    assert set(runs.to_dataframe(since=since).id) == {ids["t2"], ids["t4"], ids["chatty"]}
    assert set(runs.to_dataframe(until=since).id) == {ids["ok1"], ids["ok2"], ids["never"]}
    assert set(runs.to_dataframe(since="5s").id) == {ids["t2"], ids["t4"], ids["chatty"]}
    failed = runs.attempts_dataframe(status="FAILED")
    assert len(failed) == 4 and set(failed.status) == {"FAILED"}
    assert len(runs.attempts_dataframe(task_id="flaky", status="COMPLETED")) == 2
    assert runs.attempts_dataframe(limit=2).run_id.tolist() == [ids["t4"], ids["chatty"]]
    assert runs.attempts_dataframe(task_id=["timed", "chatty"]).attempt.tolist() == [1, 1, 1]


def test_empty_frames_keep_their_columns(history: tuple[Engine, dict[str, str]]) -> None:
    eng, _ = history
    full = eng.runs.to_dataframe()
    empty = eng.runs.to_dataframe(task_id="nobody")
    assert len(empty) == 0 and list(empty.columns) == list(full.columns)
    assert (empty.dtypes.astype(str) == full.dtypes.astype(str)).all()
    att = eng.runs.attempts_dataframe(task_id="nobody")
    assert list(att.columns) == ATTEMPT_COLUMNS and len(att) == 0
    assert isinstance(att.started_at.dtype, pd.DatetimeTZDtype)
    assert isinstance(att.status.dtype, pd.CategoricalDtype)


def test_logs_frame(history: tuple[Engine, dict[str, str]]) -> None:
    eng, ids = history
    df = eng.runs.logs(ids["chatty"])
    assert list(df.columns) == ["ts", "level", "message", "attributes"]
    assert df.message.tolist() == ["hello", "careful"]
    assert df.level.tolist() == ["info", "warn"]
    assert df.attributes.tolist() == [{"rows": 3}, None]
    assert str(df.ts.dt.tz) == "UTC"
    assert len(eng.runs.logs("run_missing")) == 0


def test_many_distinct_values_are_factorised_by_pandas(
        history: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the coding limit a column is fetched as text: the frame must be the same."""
    eng, _ = history
    coded = eng.runs.attempts_dataframe()
    monkeypatch.setattr(frames, "_MAX_CODES", 0)
    texted = eng.runs.attempts_dataframe()
    for col in ("task_id", "queue", "error_type", "tags", "status", "machine"):
        assert coded[col].astype(object).fillna("-").tolist() == \
            texted[col].astype(object).fillna("-").tolist(), col


@pytest.mark.parametrize("bad", [
    {"status": "BOGUS"}, {"since": datetime(2026, 1, 1)}, {"since": "yesterday"},
    {"limit": 0}, {"limit": True}, {"until": "-1d"},
])
def test_bad_filters_raise(engine: Engine, bad: dict[str, Any]) -> None:
    for frame in (engine.runs.to_dataframe, engine.runs.attempts_dataframe):
        with pytest.raises(ConfigurationError):
            frame(**bad)


def test_unknown_filters_are_named_and_listed(engine: Engine) -> None:
    """runs.count() takes the run filters; the frames also limit and columns. A misspelt one
    raises naming itself and the valid ones, before anything is read."""
    calls: list[tuple[Any, str, list[str]]] = [
        (engine.runs.count, "runs.count", ["batch_id", "is_test", "since", "status", "tag"]),
        (engine.runs.to_dataframe, "runs.to_dataframe", ["columns", "limit", "task_id"]),
        (engine.runs.attempts_dataframe, "runs.attempts_dataframe", ["columns", "limit"]),
    ]
    for call, where, listed in calls:
        with pytest.raises(ConfigurationError) as err:
            call(taskid="etl")
        message = str(err.value)
        assert message.startswith(f"{where}: unknown filter(s) ['taskid']; valid: ")
        assert all(f"'{name}'" in message for name in listed), message
    with pytest.raises(ConfigurationError, match="'limit'"):
        engine.runs.count(limit=3)  # a count has no limit


def test_finished_runs_leave_kernel_memory(engine: Engine) -> None:
    import gc

    from nbtasks._runstate import RunState

    @engine.task(id="noop")
    async def noop(p: int, ctx: Any) -> int:
        return p

    for start in range(0, 3000, 500):
        noop.batch_trigger(list(range(start, start + 500))).wait(timeout=30)
    gc.collect()
    assert engine.scheduler.active == {}
    assert sum(isinstance(o, RunState) for o in gc.get_objects()) < 10
    assert engine.runs.count() == 3000


def test_import_nbtasks_loads_no_pandas() -> None:
    code = "import sys, nbtasks; print('pandas' in sys.modules, 'ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


def test_prune_deletes_old_final_runs(history: tuple[Engine, dict[str, str]],
                                      clock: ManualClock,
                                      wait_status: Callable[..., RunStatus]) -> None:
    eng, ids = history

    @eng.task(id="slow")
    async def slow(p: Any, ctx: Any) -> None:
        await eng.wait.for_(days=60)

    pending = slow.trigger(None)
    wait_status(eng, pending.id, RunStatus.WAITING)
    clock.advance(31 * 86400)
    with pytest.raises(ConfigurationError):
        eng.runs.prune(older_than="a month")
    assert eng.runs.count() == 7
    assert eng.runs.prune(older_than="30d") == 6
    assert eng.runs.to_dataframe().id.tolist() == [pending.id]  # not final: kept
    assert len(eng.runs.attempts_dataframe()) == 1
    assert len(eng.runs.logs(ids["chatty"])) == 0
    left = eng.store.select("SELECT COUNT(*) FROM waitpoints WHERE run_id != ?", (pending.id,))
    assert left[1][0][0] == 0
