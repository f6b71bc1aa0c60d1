"""Wait tokens: created anywhere, completed anywhere, awaited inside a run (v4 waitpoints)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

import nbtasks
from nbtasks import (
    ConfigurationError,
    Engine,
    RunStatus,
    SubtaskUnwrapError,
    WaitResult,
    WaitTimeoutError,
    WaitToken,
)
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]


def approval_task(eng: Engine, task_id: str = "approval", **options: Any) -> Any:
    @eng.task(id=task_id, **options)
    async def approval(payload: str, ctx: Any) -> dict[str, Any]:
        result = await nbtasks.wait.for_token(payload)
        return {"ok": result.ok, "output": result.output,
                "error": None if result.error is None else type(result.error).__name__}

    return approval


def test_create_complete_and_wait(clocked: Engine, clock: ManualClock,
                                  wait_status: WaitStatus) -> None:
    token = clocked.wait.create_token(timeout="10m", tags=["approval", "user-1"])
    assert isinstance(token, WaitToken)
    assert re.match(r"^waitpoint_[123456789abcdefghijkmnopqrstuvwxyz]{21}$", token.id)
    assert token.timeout_at == clock.now() + 600 and str(token) == token.id
    handle = approval_task(clocked, queue={"concurrency_limit": 1}).trigger(token.id)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    assert clocked.queues.retrieve("task/approval")["running"] == 0  # the slot is released
    pending = clocked.wait.list_tokens()
    assert [(t["id"], t["status"], t["tags"], t["run_id"]) for t in pending] == [
        (token.id, "WAITING", ["approval", "user-1"], handle.id)]
    assert pending[0]["timeout_at"] == datetime.fromtimestamp(clock.now() + 600, UTC)
    assert clocked.wait.complete_token(token, {"approved": True}) is True
    assert handle.wait(timeout=10).output == {"ok": True, "output": {"approved": True},
                                              "error": None}
    assert clocked.wait.list_tokens() == []
    assert [t["status"] for t in clocked.wait.list_tokens(status=None)] == ["COMPLETED"]
    assert clocked.wait.complete_token(token, {"again": 1}) is False  # already settled


def test_token_timeout(clocked: Engine, clock: ManualClock, wait_status: WaitStatus) -> None:
    token = clocked.wait.create_token(timeout=60)
    handle = approval_task(clocked).trigger(token.id)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    clock.advance(59)
    assert handle.status is RunStatus.WAITING
    clock.advance(1)
    assert handle.wait(timeout=10).output == {"ok": False, "output": None,
                                              "error": "WaitTimeoutError"}
    assert [t["status"] for t in clocked.wait.list_tokens(status="TIMED_OUT")] == ["TIMED_OUT"]
    assert clocked.wait.complete_token(token) is False


def test_token_without_timeout_waits_for_ever(clocked: Engine, clock: ManualClock,
                                              wait_status: WaitStatus) -> None:
    token = clocked.wait.create_token()
    assert token.timeout_at is None
    handle = approval_task(clocked).trigger(token.id)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    clock.advance(365 * 86400)
    assert handle.status is RunStatus.WAITING
    clocked.wait.complete_token(token)  # no data: an empty object, as the reference does
    assert handle.wait(timeout=10).output["output"] == {}


def test_completed_before_the_wait_returns_at_once(engine: Engine) -> None:
    token = engine.wait.create_token(timeout="1h")
    engine.wait.complete_token(token.id, [1, 2, 3])
    assert approval_task(engine).trigger(token.id).wait(timeout=10).output["output"] == [1, 2, 3]


def test_wait_result_unwrap() -> None:
    assert WaitResult("waitpoint_x", True, {"a": 1}, None).unwrap() == {"a": 1}
    failed: WaitResult[Any] = WaitResult("waitpoint_x", False, None, WaitTimeoutError("late"))
    assert isinstance(failed.error, TimeoutError)
    with pytest.raises(SubtaskUnwrapError, match="late"):
        failed.unwrap()


def test_completed_from_another_run(engine: Engine) -> None:
    token = engine.wait.create_token(timeout="1h")

    @engine.task(id="approver")
    async def approver(payload: str, ctx: Any) -> bool:
        return nbtasks.wait.complete_token(payload, {"by": ctx.run.id})

    waiting = approval_task(engine).trigger(token.id)
    approving = approver.trigger(token.id)
    assert approving.wait(timeout=10).output is True
    assert waiting.wait(timeout=10).output["output"] == {"by": approving.id}


def test_several_runs_wait_on_one_token(engine: Engine, wait_status: WaitStatus) -> None:
    token = engine.wait.create_token()
    task = approval_task(engine)
    handles = [task.trigger(token.id) for _ in range(3)]
    for h in handles:
        wait_status(engine, h.id, RunStatus.WAITING)
    engine.wait.complete_token(token, "go")
    assert [h.wait(timeout=10).output["output"] for h in handles] == ["go"] * 3


def test_sync_body_uses_for_token_sync(engine: Engine, wait_status: WaitStatus) -> None:
    token = engine.wait.create_token()

    @engine.task(id="sync-approval")
    def sync_approval(payload: str, ctx: Any) -> Any:
        return nbtasks.wait.for_token_sync(payload).unwrap()

    handle = sync_approval.trigger(token.id)
    wait_status(engine, handle.id, RunStatus.WAITING)
    done = threading.Thread(target=engine.wait.complete_token, args=(token, {"n": 1}))
    done.start()
    done.join(10)
    assert handle.wait(timeout=10).output == {"n": 1}


def test_token_idempotency_key(engine: Engine) -> None:
    first = engine.wait.create_token(idempotency_key="approve-order-7")
    again = engine.wait.create_token(idempotency_key="approve-order-7")
    assert again.id == first.id and again.is_cached and not first.is_cached


def test_module_level_tokens() -> None:
    token = nbtasks.wait.create_token(timeout="1h", tags="ops")
    assert [t["id"] for t in nbtasks.wait.list_tokens()] == [token.id]
    assert nbtasks.wait.complete_token(token, 1) is True
    assert nbtasks.wait.list_tokens() == []


def test_bad_token_input(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="only have 10 tags"):
        engine.wait.create_token(tags=[f"t{i}" for i in range(11)])
    with pytest.raises(ConfigurationError, match="not a duration"):
        engine.wait.create_token(timeout="a while")
    with pytest.raises(ConfigurationError, match="no wait token"):
        engine.wait.complete_token("waitpoint_nope", {})
    with pytest.raises(nbtasks.PayloadSerializationError):
        engine.wait.complete_token(engine.wait.create_token(), {"x": object()})
    result = approval_task(engine, "unknown-token", retry=None).trigger("waitpoint_nope")
    assert "no wait token" in str(result.wait(timeout=10).error)
