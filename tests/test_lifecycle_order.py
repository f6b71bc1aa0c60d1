"""The attempt lifecycle: every hook in the reference order, once per run or once per attempt.

Each hook appends to a list; the whole list is compared, so a hook that runs twice, too early or
not at all fails the test. Hooks alternate between sync and async to prove both work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]
RETRY_ONCE = {"max_attempts": 2, "min_timeout_in_ms": 1000, "randomize": False}


def recording_task(eng: Engine, calls: list[str], task_id: str, fail_attempts: set[int],
                   **options: Any) -> Any:
    """A task whose every hook records itself; `run` fails on the given attempt numbers."""

    def on_start(payload: Any, ctx: Any) -> None:
        calls.append("on_start")

    async def init(payload: Any, ctx: Any) -> dict[str, int]:
        calls.append(f"init#{ctx.attempt.number}")
        return {"attempt": ctx.attempt.number}

    async def middleware(payload: Any, ctx: Any, next: Callable[[], Any]) -> str:
        calls.append(f"middleware:before#{ctx.attempt.number}")
        await next()
        calls.append(f"middleware:after#{ctx.attempt.number}")
        return "middleware's own value, never the output"

    def on_success(payload: Any, output: Any, ctx: Any) -> None:
        calls.append(f"on_success({output})")

    async def on_failure(payload: Any, error: BaseException, ctx: Any) -> None:
        calls.append(f"on_failure({error})")

    def handle_error(payload: Any, error: BaseException, ctx: Any) -> None:
        calls.append(f"handle_error#{ctx.attempt.number}({error})")

    async def cleanup(payload: Any, ctx: Any) -> None:
        calls.append(f"cleanup#{ctx.attempt.number}")

    async def run(payload: Any, ctx: Any) -> str:
        calls.append(f"run#{ctx.attempt.number}(init={ctx.init['attempt']})")
        if ctx.attempt.number in fail_attempts:
            raise RuntimeError(f"fail {ctx.attempt.number}")
        return "out"

    return eng.task(id=task_id, run=run, on_start=on_start, init=init, middleware=middleware,
                    on_success=on_success, on_failure=on_failure, handle_error=handle_error,
                    cleanup=cleanup, **options)


def global_hooks(calls: list[str]) -> dict[str, Any]:
    async def g_start(payload: Any, ctx: Any) -> None:
        calls.append("global:on_start")

    def g_success(payload: Any, output: Any, ctx: Any) -> None:
        calls.append(f"global:on_success({output})")

    def g_failure(payload: Any, error: BaseException, ctx: Any) -> None:
        calls.append(f"global:on_failure({error})")

    return {"on_start": g_start, "on_success": g_success, "on_failure": g_failure}


def test_success_after_a_retry_in_reference_order(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    calls: list[str] = []
    clocked.configure(**global_hooks(calls))
    t = recording_task(clocked, calls, "ordered", {1}, retry=RETRY_ONCE)
    handle = t.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    clock.advance(1)
    assert handle.wait(timeout=10).output == "out"
    assert calls == [
        "global:on_start", "on_start",
        "init#1", "middleware:before#1", "run#1(init=1)", "handle_error#1(fail 1)", "cleanup#1",
        "init#2", "middleware:before#2", "run#2(init=2)", "middleware:after#2",
        "on_success(out)", "global:on_success(out)", "cleanup#2",
    ]


def test_final_failure_in_reference_order(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    calls: list[str] = []
    clocked.configure(**global_hooks(calls))
    t = recording_task(clocked, calls, "ordered-fail", {1, 2}, retry=RETRY_ONCE)
    handle = t.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    clock.advance(1)
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.FAILED and str(result.error) == "fail 2"
    assert calls == [
        "global:on_start", "on_start",
        "init#1", "middleware:before#1", "run#1(init=1)", "handle_error#1(fail 1)", "cleanup#1",
        "init#2", "middleware:before#2", "run#2(init=2)", "handle_error#2(fail 2)",
        "on_failure(fail 2)", "global:on_failure(fail 2)", "cleanup#2",
    ]


def test_global_hooks_given_to_the_engine_constructor(db_path: Any) -> None:
    calls: list[str] = []
    with Engine(store=str(db_path), **global_hooks(calls)) as eng:
        t = recording_task(eng, calls, "ctor-hooks", set())
        assert t.trigger(None).wait(timeout=10).ok
    assert calls == [
        "global:on_start", "on_start", "init#1", "middleware:before#1", "run#1(init=1)",
        "middleware:after#1", "on_success(out)", "global:on_success(out)", "cleanup#1",
    ]


def test_module_level_configure_sets_global_hooks() -> None:
    calls: list[str] = []
    nbtasks.configure(**global_hooks(calls))

    @nbtasks.task(id="lifecycle-module-configure", retry=None)
    def failing(payload: Any, ctx: Any) -> None:
        raise ValueError("nope")

    assert not failing.trigger(None).wait(timeout=10).ok
    assert calls == ["global:on_start", "global:on_failure(nope)"]


def test_hook_arguments(engine: Engine) -> None:
    seen: dict[str, tuple[Any, ...]] = {}

    def on_success(payload: Any, output: Any, ctx: Any) -> None:
        seen["on_success"] = (payload, output, ctx.run.id)

    def on_failure(payload: Any, error: BaseException, ctx: Any) -> None:
        seen["on_failure"] = (payload, error, ctx.run.id)

    def handle_error(payload: Any, error: BaseException, ctx: Any) -> None:
        seen["handle_error"] = (payload, error, ctx.attempt.number)

    def run(payload: dict[str, Any], ctx: Any) -> Any:
        if payload["fail"]:
            raise KeyError("missing")
        return {"n": 1}

    t = engine.task(id="hook-args", run=run, retry={"max_attempts": 1}, on_success=on_success,
                    on_failure=on_failure, handle_error=handle_error)
    ok = t.trigger({"fail": False})
    assert ok.wait(timeout=10).ok
    assert seen["on_success"] == ({"fail": False}, {"n": 1}, ok.id)
    bad = t.trigger({"fail": True})
    assert not bad.wait(timeout=10).ok
    payload, error, run_id = seen["on_failure"]
    assert payload == {"fail": True} and isinstance(error, KeyError) and run_id == bad.id
    assert seen["handle_error"][1] is error and seen["handle_error"][2] == 1


def test_on_start_once_per_run_init_and_cleanup_every_attempt(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    calls: list[str] = []

    def run(payload: Any, ctx: Any) -> None:
        raise RuntimeError("always")

    t = clocked.task(id="counted", run=run,
                     retry={"max_attempts": 3, "factor": 1, "min_timeout_in_ms": 1000,
                            "randomize": False},
                     on_start=lambda p, c: calls.append("on_start"),
                     init=lambda p, c: calls.append("init"),
                     cleanup=lambda p, c: calls.append("cleanup"))
    handle = t.trigger(None)
    for attempt in (1, 2):
        wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
        assert clocked.runs.retrieve(handle.id).attempt_count == attempt
        clock.advance(1)
    assert handle.wait(timeout=10).status is RunStatus.FAILED
    assert calls == ["on_start"] + ["init", "cleanup"] * 3


def test_init_return_value_is_ctx_init_for_run_success_and_cleanup(engine: Engine) -> None:
    seen: list[Any] = []

    def init(payload: Any, ctx: Any) -> dict[str, str]:
        return {"db": "connection"}

    def on_success(payload: Any, output: Any, ctx: Any) -> None:
        seen.append(("on_success", ctx.init))

    async def cleanup(payload: Any, ctx: Any) -> None:
        seen.append(("cleanup", ctx.init))

    async def run(payload: Any, ctx: Any) -> Any:
        return ctx.init

    t = engine.task(id="with-init", run=run, init=init, on_success=on_success, cleanup=cleanup)
    assert t.trigger(None).wait(timeout=10).output == {"db": "connection"}
    assert seen == [("on_success", {"db": "connection"}), ("cleanup", {"db": "connection"})]


def test_without_init_ctx_init_is_none(engine: Engine) -> None:
    @engine.task(id="no-init")
    async def no_init(payload: Any, ctx: Any) -> Any:
        return ctx.init

    assert no_init.trigger(None).wait(timeout=10).output is None


@pytest.mark.parametrize("sync_middleware", [False, True])
def test_middleware_wraps_run_and_output_is_runs_value(engine: Engine,
                                                       sync_middleware: bool) -> None:
    order: list[str] = []

    async def async_mw(payload: Any, ctx: Any, next: Callable[[], Any]) -> str:
        order.append("before")
        value = await next()
        order.append(f"after:{value}")
        return "replaced?"

    def sync_mw(payload: Any, ctx: Any, next: Callable[[], Any]) -> str:
        order.append("before")
        value = next()
        order.append(f"after:{value}")
        return "replaced?"

    async def run(payload: int, ctx: Any) -> int:
        order.append("run")
        nbtasks.metadata.set("seen-by-run", True)
        return payload + 1

    t = engine.task(id=f"mw-{sync_middleware}", run=run,
                    middleware=sync_mw if sync_middleware else async_mw)
    handle = t.trigger(41)
    assert handle.wait(timeout=10).output == 42
    assert order == ["before", "run", "after:42"]
    assert engine.runs.retrieve(handle.id).metadata == {"seen-by-run": True}


def test_middleware_that_never_calls_next_skips_run(engine: Engine) -> None:
    ran: list[int] = []

    async def gatekeeper(payload: Any, ctx: Any, next: Callable[[], Any]) -> None:
        return None

    t = engine.task(id="gated-mw", run=lambda p, c: ran.append(1), middleware=gatekeeper)
    result = t.trigger(None).wait(timeout=10)
    assert result.ok and result.output is None and ran == []
