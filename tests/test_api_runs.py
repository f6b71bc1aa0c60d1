"""`runs.*` and the Run snapshot, read back from a real SQLite file holding JSON."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _helpers import row_in_files

import nbtasks
from nbtasks import ConfigurationError, Engine, Run, RunList, RunNotFoundError, RunStatus
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]


def test_run_snapshot_fields(clocked: Engine, clock: ManualClock) -> None:
    @clocked.task(id="snap", retry={"max_attempts": 2, "min_timeout_in_ms": 0})
    async def snap(payload: dict[str, int], ctx: Any) -> dict[str, int]:
        if ctx.attempt.number == 1:
            raise ValueError("first try")
        return {"double": payload["n"] * 2}

    t0 = datetime.fromtimestamp(clock.now(), UTC)
    handle = snap.trigger({"n": 4}, tags=["x", "y"], metadata={"m": 1})
    handle.wait(timeout=10)
    run = clocked.runs.retrieve(handle.id)
    assert isinstance(run, Run)
    assert (run.id, run.task_id, run.status) == (handle.id, "snap", RunStatus.COMPLETED)
    assert run.payload == {"n": 4} and run.output == {"double": 8} and run.error is None
    assert run.attempt_count == 2
    assert run.created_at == t0 and run.started_at == t0 and run.finished_at == t0
    assert run.duration_ms == 0  # the manual clock did not move
    assert run.tags == ["x", "y"] and run.metadata == {"m": 1}
    assert (run.parent_id, run.root_id, run.batch_id, run.is_test) == (None, None, None, False)
    assert run.queue == "task/snap" and run.machine == "kernel"
    assert [a.status for a in run.attempts] == ["FAILED", "COMPLETED"]
    assert (run.is_completed, run.is_success, run.is_failed) == (True, True, False)


def test_failed_run_error_has_type_message_traceback(engine: Engine) -> None:
    @engine.task(id="err", retry=None)
    def err(payload: Any, ctx: Any) -> None:
        raise KeyError("missing-key")

    handle = err.trigger(None)
    handle.wait(timeout=10)
    run = engine.runs.retrieve(handle.id)
    assert run.status is RunStatus.FAILED and run.is_failed
    assert run.error is not None
    assert run.error["type"] == "KeyError" and run.error["message"] == "'missing-key'"
    assert "Traceback" in run.error["traceback"] and "raise KeyError" in run.error["traceback"]


def test_retrieve_unknown_id(engine: Engine) -> None:
    with pytest.raises(RunNotFoundError) as info:
        engine.runs.retrieve("run_doesnotexist000000000")
    assert isinstance(info.value, LookupError)


def test_list_filters_and_limit(engine: Engine) -> None:
    @engine.task(id="list-a", retry=None)
    async def a(payload: int, ctx: Any) -> int:
        if payload < 0:
            raise ValueError("negative")
        return payload

    @engine.task(id="list-b")
    async def b(payload: int, ctx: Any) -> int:
        return payload

    handles = [a.trigger(i, tags=["even" if i % 2 == 0 else "odd"]) for i in range(6)]
    bad = a.trigger(-1, tags=["odd", "bad"])
    other = b.trigger(0, tags=["even"])
    for h in [*handles, bad, other]:
        h.wait(timeout=10)
    everything = engine.runs.list()
    assert isinstance(everything, RunList) and len(everything) == 8
    assert [r.id for r in everything][:2] == [other.id, bad.id]  # newest first
    assert {r.id for r in engine.runs.list(task_id="list-b")} == {other.id}
    assert {r.id for r in engine.runs.list(status="FAILED")} == {bad.id}
    assert {r.id for r in engine.runs.list(status=[RunStatus.FAILED, "completed"],
                                           task_id="list-b")} == {other.id}
    assert len(engine.runs.list(tag="odd")) == 4
    assert {r.id for r in engine.runs.list(tag="bad")} == {bad.id}
    assert len(engine.runs.list(tag=["bad", "even"], task_id="list-a")) == 4
    assert len(engine.runs.list(limit=3)) == 3
    assert engine.runs.count(task_id="list-a", status="COMPLETED") == 6
    with pytest.raises(ConfigurationError, match="not a run status"):
        engine.runs.list(status="DONE")
    with pytest.raises(ConfigurationError, match="limit"):
        engine.runs.list(limit=0)


def test_cancel_and_cancel_of_final_runs(engine: Engine, wait_status: WaitStatus) -> None:
    @engine.task(id="cancellable")
    def cancellable(payload: Any, ctx: Any) -> str:
        ctx.signal.wait(10)
        return "late"

    handle = cancellable.trigger(None)
    wait_status(engine, handle.id, RunStatus.EXECUTING)
    assert engine.runs.cancel(handle.id) is True
    assert engine.runs.retrieve(handle.id).status is RunStatus.CANCELED
    assert engine.runs.cancel(handle.id) is False
    with pytest.raises(RunNotFoundError):
        engine.runs.cancel("run_doesnotexist000000000")


def test_replay_copies_payload_tags_queue_and_key(engine: Engine) -> None:
    @engine.task(id="replay-me", queue={"concurrency_limit": 2})
    async def replay_me(payload: dict[str, int], ctx: Any) -> list[Any]:
        return [payload["n"], list(ctx.run.tags)]

    original = replay_me.trigger({"n": 1}, tags=["keep"], concurrency_key="user-1",
                                 idempotency_key="once")
    original.wait(timeout=10)
    again = engine.runs.replay(original.id)
    assert again.id != original.id and not again.is_cached
    again.wait(timeout=10)
    first, second = engine.runs.retrieve(original.id), engine.runs.retrieve(again.id)
    assert second.payload == first.payload and second.tags == ["keep"]
    assert second.concurrency_key == "user-1" and second.queue == first.queue
    assert second.idempotency_key is None  # never copied
    assert engine.runs.replay(original.id, {"n": 5}).wait(timeout=10).output[0] == 5
    with pytest.raises(RunNotFoundError):
        engine.runs.replay("run_doesnotexist000000000")


def test_module_level_runs_api() -> None:
    @nbtasks.task(id="api-runs-module")
    async def module_task(payload: int, ctx: Any) -> int:
        return payload

    handle = module_task.trigger(3)
    handle.wait(timeout=10)
    assert nbtasks.runs.retrieve(handle.id).output == 3
    assert [r.id for r in nbtasks.runs.list(task_id="api-runs-module")] == [handle.id]
    assert nbtasks.runs.cancel(handle.id) is False
    assert nbtasks.runs.replay(handle.id).wait(timeout=10).output == 3


def test_store_is_a_real_sqlite_file_of_json_without_pickles(engine: Engine,
                                                              db_path: Path) -> None:
    @engine.task(id="stored", retry={"max_attempts": 2, "min_timeout_in_ms": 1})
    async def stored(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        nbtasks.metadata.set("step", 1)
        nbtasks.logger.info("hello", n=1)
        if ctx.attempt.number == 1:
            raise RuntimeError("retry me")
        return {"rows": payload["rows"], "ok": True}

    handle = stored.trigger({"rows": [1, 2, {"a": None}]}, tags=["t"])
    handle.wait(timeout=10)
    engine.runs.retrieve(handle.id)  # pending writes have landed
    assert db_path.exists() and db_path.read_bytes()[:16] == b"SQLite format 3\x00"
    with closing(sqlite3.connect(db_path)) as conn, conn:
        row = conn.execute("SELECT payload, output, tags, metadata, error, status FROM runs "
                           "WHERE id=?", (handle.id,)).fetchone()
        assert json.loads(row[0]) == {"rows": [1, 2, {"a": None}]}
        assert json.loads(row[1]) == {"rows": [1, 2, {"a": None}], "ok": True}
        assert json.loads(row[2]) == ["t"] and json.loads(row[3]) == {"step": 1}
        assert row[4] is None and row[5] == "COMPLETED"
        attempt_error = conn.execute(
            "SELECT error FROM attempts WHERE run_id=? AND number=1", (handle.id,)).fetchone()[0]
        assert json.loads(attempt_error)["message"] == "retry me"
        # No BLOBs anywhere, and every text column that holds data is valid JSON.
        for table, cols in (("runs", ("payload", "output", "error", "tags", "metadata")),
                            ("attempts", ("error",)), ("logs", ("attributes",))):
            for col in cols:
                kinds = {k for (k,) in conn.execute(f"SELECT DISTINCT typeof({col}) FROM {table}")}
                assert kinds <= {"text", "null"}, (table, col, kinds)
                bad = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {col} IS NOT NULL "
                                   f"AND json_valid({col}) = 0").fetchone()[0]
                assert bad == 0, (table, col)
        blobs = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                 if any(r[2].upper() == "BLOB" for r in conn.execute(f"PRAGMA table_info({t})"))]
        assert blobs == []
    raw = db_path.read_bytes() + (db_path.with_name(db_path.name + "-wal").read_bytes()
                                  if db_path.with_name(db_path.name + "-wal").exists() else b"")
    assert b"cnbtasks" not in raw and b"\x80\x04\x95" not in raw  # no pickle protocol frames


def test_memory_store_is_ephemeral(tmp_path: Path) -> None:
    with Engine(store=":memory:") as eng:
        @eng.task(id="mem")
        async def mem(payload: int, ctx: Any) -> int:
            return payload

        handle = mem.trigger(1)
        assert handle.wait(timeout=10).output == 1
        assert eng.runs.retrieve(handle.id).output == 1
    assert list(tmp_path.rglob("*.db")) == []


def test_default_store_is_next_to_the_notebook(tmp_path: Path) -> None:
    @nbtasks.task(id="api-default-store")
    async def default_store(payload: int, ctx: Any) -> int:
        return payload

    default_store.trigger(1).wait(timeout=10)
    db = tmp_path / ".nbtasks" / "runs.db"  # conftest chdirs into tmp_path
    assert db.exists()
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700


def test_trigger_returns_once_durable_and_results_are_durable_first(engine: Engine,
                                                                   db_path: Path) -> None:
    gate = threading.Event()

    @engine.task(id="durable")
    def durable(payload: int, ctx: Any) -> int:
        gate.wait(10)
        return payload + 1

    def stored(run_id: str) -> tuple[Any, ...] | None:
        return row_in_files(db_path, run_id, "status, output")  # only committed data

    handle = durable.trigger(1)
    row = stored(handle.id)
    assert row is not None and row[0] in ("QUEUED", "EXECUTING")
    gate.set()
    result = handle.wait(timeout=10)
    assert result.output == 2
    assert stored(handle.id) == ("COMPLETED", "2")  # on disk before wait() returned
