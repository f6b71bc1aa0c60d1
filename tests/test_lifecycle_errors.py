"""What an error in each hook does, handle_error's answers, aborts and bad outputs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nbtasks import AbortTaskRunError, Engine, NbtasksError, RunStatus
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]
NO_JITTER = {"max_attempts": 3, "factor": 2, "min_timeout_in_ms": 1000, "randomize": False}


def logs(eng: Engine, run_id: str) -> list[tuple[str, str]]:
    eng.runs.retrieve(run_id)  # lets pending writes land
    return list(eng.store.select("SELECT level, message FROM logs WHERE run_id=? ORDER BY ts",
                                 (run_id,))[1])


def attempt_starts(eng: Engine, run_id: str) -> list[float]:
    return [a.started_at.timestamp() for a in eng.runs.retrieve(run_id).attempts
            if a.started_at is not None]


def failing(calls: list[str]) -> Callable[[Any, Any], Any]:
    def run(payload: Any, ctx: Any) -> None:
        calls.append(f"run#{ctx.attempt.number}")
        raise RuntimeError(f"attempt {ctx.attempt.number} failed")

    return run


@pytest.mark.parametrize("hook", ["on_start", "on_success"])
def test_errors_in_on_start_and_on_success_are_logged_and_change_nothing(
    engine: Engine, hook: str,
) -> None:
    def broken(*args: Any) -> None:
        raise ValueError(f"{hook} is broken")

    t = engine.task(id=f"swallow-{hook}", run=lambda p, c: "fine", **{hook: broken})
    handle = t.trigger(None)
    result = handle.wait(timeout=10)
    assert result.ok and result.output == "fine"
    run = engine.runs.retrieve(handle.id)
    assert run.attempt_count == 1
    assert ("error", f"{hook} hook raised ValueError: {hook} is broken") in logs(engine, handle.id)


def test_error_in_on_failure_is_logged_and_the_run_still_fails_once(engine: Engine) -> None:
    calls: list[str] = []

    def on_failure(payload: Any, error: BaseException, ctx: Any) -> None:
        calls.append("on_failure")
        raise ValueError("on_failure is broken")

    def g_failure(payload: Any, error: BaseException, ctx: Any) -> None:
        calls.append("global:on_failure")

    engine.configure(on_failure=g_failure)
    t = engine.task(id="bad-on-failure", run=failing(calls), retry=None, on_failure=on_failure)
    handle = t.trigger(None)
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.FAILED and str(result.error) == "attempt 1 failed"
    assert calls == ["run#1", "on_failure", "global:on_failure"]
    assert ("error", "on_failure hook raised ValueError: on_failure is broken") in logs(
        engine, handle.id)


def test_error_in_handle_error_crashes_without_retry_or_on_failure(engine: Engine) -> None:
    calls: list[str] = []

    def handle_error(payload: Any, error: BaseException, ctx: Any) -> None:
        raise LookupError("handler bug")

    t = engine.task(id="bad-handler", run=failing(calls), retry={"max_attempts": 5},
                    handle_error=handle_error,
                    on_failure=lambda p, e, c: calls.append("on_failure"))
    handle = t.trigger(None)
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.CRASHED
    assert "handle_error raised LookupError: handler bug" in str(result.error)
    assert calls == ["run#1"]
    assert engine.runs.retrieve(handle.id).attempt_count == 1


@pytest.mark.parametrize("hook", ["init", "middleware", "cleanup"])
def test_errors_in_init_middleware_cleanup_fail_the_attempt_and_retry(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus, hook: str,
) -> None:
    calls: list[str] = []

    def broken(payload: Any, ctx: Any, *rest: Any) -> Any:
        calls.append(f"{hook}#{ctx.attempt.number}")
        if ctx.attempt.number == 1:
            raise OSError(f"{hook} failed")
        return rest[0]() if rest else None  # middleware: call next on the second attempt

    def run(payload: Any, ctx: Any) -> str:
        calls.append(f"run#{ctx.attempt.number}")
        return "ok"

    hooks: dict[str, Any] = {hook: broken}
    if hook != "cleanup":
        hooks["cleanup"] = lambda p, c: calls.append(f"cleanup#{c.attempt.number}")
    t = clocked.task(id=f"broken-{hook}", run=run, retry=NO_JITTER, **hooks)
    handle = t.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    err = clocked.runs.retrieve(handle.id).error
    assert err is not None and (err["type"], err["message"]) == ("OSError", f"{hook} failed")
    clock.advance(1)
    assert handle.wait(timeout=10).output == "ok"
    expected = {
        "init": ["init#1", "cleanup#1", "init#2", "run#2", "cleanup#2"],
        "middleware": ["middleware#1", "cleanup#1", "middleware#2", "run#2", "cleanup#2"],
        "cleanup": ["run#1", "cleanup#1", "run#2", "cleanup#2"],
    }[hook]
    assert calls == expected


def test_handle_error_none_means_the_default_policy(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    calls: list[str] = []
    t = clocked.task(id="default-policy", run=failing(calls), retry=NO_JITTER,
                     handle_error=lambda p, e, c: None)
    handle = t.trigger(None)
    t0 = clock.now()
    for delay in (1, 2):
        wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
        clock.advance(delay)
    assert handle.wait(timeout=10).status is RunStatus.FAILED
    assert [s - t0 for s in attempt_starts(clocked, handle.id)] == [0, 1, 3]


def test_handle_error_skip_retrying_with_a_replacement_error(engine: Engine) -> None:
    calls: list[str] = []
    replaced = PermissionError("not retryable: replaced")
    received: list[BaseException] = []
    t = engine.task(id="skip", run=failing(calls), retry={"max_attempts": 5},
                    handle_error=lambda p, e, c: {"skip_retrying": True, "error": replaced},
                    on_failure=lambda p, e, c: received.append(e))
    result = t.trigger(None).wait(timeout=10)
    assert calls == ["run#1"]
    assert received == [replaced]
    assert result.error is not None and result.error.type_name == "PermissionError"
    assert str(result.error) == "not retryable: replaced"


@pytest.mark.parametrize("answer", [{}, {"error": ValueError("just this")}])
def test_handle_error_other_dicts_mean_no_retry(engine: Engine, answer: dict[str, Any]) -> None:
    calls: list[str] = []
    t = engine.task(id=f"noop-{len(answer)}", run=failing(calls), retry={"max_attempts": 5},
                    handle_error=lambda p, e, c: answer)
    result = t.trigger(None).wait(timeout=10)
    assert calls == ["run#1"] and result.status is RunStatus.FAILED
    assert str(result.error) == ("just this" if answer else "attempt 1 failed")


def test_handle_error_retry_at(clocked: Engine, clock: ManualClock,
                               wait_status: WaitStatus) -> None:
    at = datetime.fromtimestamp(clock.now(), UTC) + timedelta(minutes=5)
    calls: list[str] = []
    t = clocked.task(id="retry-at", run=failing(calls), retry={"max_attempts": 2},
                     handle_error=lambda p, e, c: {"retry_at": at})
    handle = t.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    assert clocked.runs.retrieve(handle.id).delay_until == at
    clock.advance(299)
    assert handle.status is RunStatus.REATTEMPTING and calls == ["run#1"]
    clock.advance(1)
    assert handle.wait(timeout=10).status is RunStatus.FAILED
    assert attempt_starts(clocked, handle.id)[1] == at.timestamp()


@pytest.mark.parametrize(
    ("answer", "delay"),
    [
        ({"retry_delay_in_ms": 7500}, 7.5),
        ({"retry": {"min_timeout_in_ms": 250, "randomize": False}}, 0.25),
    ],
)
def test_handle_error_retry_delay_and_custom_retry(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus, answer: dict[str, Any],
    delay: float,
) -> None:
    calls: list[str] = []
    t = clocked.task(id=f"custom-{delay}", run=failing(calls), retry=NO_JITTER,
                     handle_error=lambda p, e, c: answer if c.attempt.number == 1 else None)
    handle = t.trigger(None)
    t0 = clock.now()
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    clock.advance(delay)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING, RunStatus.FAILED)
    assert attempt_starts(clocked, handle.id)[1] - t0 == delay


@pytest.mark.parametrize("kind", ["retry_delay_in_ms", "retry_at", "retry"])
def test_max_attempts_holds_even_when_handle_error_asks_for_a_retry(engine: Engine,
                                                                   kind: str) -> None:
    calls: list[str] = []

    def insist(payload: Any, error: BaseException, ctx: Any) -> dict[str, Any]:
        return {
            "retry_delay_in_ms": {"retry_delay_in_ms": 1},
            "retry_at": {"retry_at": datetime.now(UTC) + timedelta(milliseconds=1)},
            "retry": {"retry": {"max_attempts": 10, "min_timeout_in_ms": 1}},
        }[kind]

    t = engine.task(id=f"insistent-{kind}", run=failing(calls), retry={"max_attempts": 3},
                    handle_error=insist)
    result = t.trigger(None).wait(timeout=10)
    assert result.status is RunStatus.FAILED
    assert calls == ["run#1", "run#2", "run#3"]


def test_abort_task_run_error_stops_at_once(engine: Engine) -> None:
    calls: list[str] = []

    def run(payload: Any, ctx: Any) -> None:
        calls.append("run")
        raise AbortTaskRunError("give up now")

    t = engine.task(id="abort", run=run, retry={"max_attempts": 5},
                    handle_error=lambda p, e, c: calls.append("handle_error"),
                    on_failure=lambda p, e, c: calls.append(f"on_failure({e})"))
    handle = t.trigger(None)
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.FAILED and str(result.error) == "give up now"
    assert calls == ["run", "on_failure(give up now)"]
    assert engine.runs.retrieve(handle.id).attempt_count == 1
    assert not issubclass(AbortTaskRunError, NbtasksError)


def test_non_json_output_fails_the_attempt_with_a_clear_message(engine: Engine) -> None:
    @engine.task(id="bad-output")
    async def bad_output(payload: Any, ctx: Any) -> dict[str, Any]:
        return {"when": datetime(2026, 1, 1), "ok": True}

    handle = bad_output.trigger(None)
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.FAILED
    assert result.error is not None and result.error.type_name == "OutputSerializationError"
    assert "bad-output" in str(result.error) and "not JSON-serialisable" in str(result.error)
    assert 'output["when"]' in str(result.error)
    assert engine.runs.retrieve(handle.id).output is None
