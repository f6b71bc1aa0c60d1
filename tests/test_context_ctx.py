"""`ctx` inside a run, the logger, and print()/logging captured into the run's log."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine
from nbtasks._context import CancelSignal, _Logger
from nbtasks.executors import InlineExecutor
from nbtasks.testing import ManualClock


def logs(eng: Engine, run_id: str) -> list[tuple[str, str]]:
    eng.runs.retrieve(run_id)  # lets pending writes land
    return list(eng.store.select("SELECT level, message FROM logs WHERE run_id=? ORDER BY ts",
                                 (run_id,))[1])


def test_ctx_fields(clocked: Engine, clock: ManualClock) -> None:
    @clocked.task(id="ctx-fields", queue={"concurrency_limit": 3})
    async def ctx_fields(payload: Any, ctx: Any) -> dict[str, Any]:
        return {
            "task": ctx.task.id, "run": ctx.run.id, "tags": list(ctx.run.tags),
            "is_test": ctx.run.is_test, "key": ctx.run.idempotency_key,
            "attempt": ctx.attempt.number, "started": ctx.attempt.started_at.isoformat(),
            "queue": ctx.queue.name,
            "machine": [ctx.machine.name, ctx.machine.cpu, ctx.machine.memory],
            "init": ctx.init, "signal": [callable(getattr(ctx.signal, "wait", None)),
                                         ctx.signal.is_set()],
        }

    handle = ctx_fields.trigger(None, tags=["a", "b"], idempotency_key="k-1")
    out = handle.wait(timeout=10).unwrap()
    assert out == {
        "task": "ctx-fields", "run": handle.id, "tags": ["a", "b"], "is_test": False,
        "key": nbtasks.idempotency_keys.create("k-1", scope="global"), "attempt": 1,
        "started": datetime.fromtimestamp(clock.now(), UTC).isoformat(),
        "queue": "task/ctx-fields", "machine": ["kernel", 0, 0], "init": None,
        "signal": [True, False],
    }


def test_ctx_machine_for_a_preset(db_path: Path) -> None:
    # Presets normally run in worker processes; an inline executor keeps this test in-process.
    with Engine(store=str(db_path), executor=InlineExecutor()) as eng:
        @eng.task(id="ctx-machine", machine="large-1x")
        def ctx_machine(payload: Any, ctx: Any) -> list[Any]:
            return [ctx.machine.name, ctx.machine.cpu, ctx.machine.memory]

        assert ctx_machine.trigger(None).wait(timeout=10).output == ["large-1x", 4, 8]
        override = ctx_machine.trigger(None, machine="micro")
        assert override.wait(timeout=10).output == ["micro", 0.25, 0.25]
        assert eng.runs.retrieve(override.id).machine == "micro"


def test_ctx_run_is_test_is_inherited_by_children(engine: Engine) -> None:
    @engine.task(id="is-test-child")
    async def child(payload: Any, ctx: Any) -> bool:
        return bool(ctx.run.is_test)

    @engine.task(id="is-test-parent")
    async def parent(payload: Any, ctx: Any) -> list[bool]:
        return [ctx.run.is_test, (await child.trigger_and_wait(None)).unwrap()]

    assert parent.trigger(None).wait(timeout=10).output == [False, False]
    # The dashboard's Test form triggers through the engine with is_test=True.
    test_run = engine.trigger_encoded(parent.definition, "null", {}, is_test=True)
    assert test_run.wait(timeout=10).output == [True, True]
    assert engine.runs.retrieve(test_run.id).is_test is True
    assert engine.runs.list(task_id="is-test-child", is_test=True)[0].is_test


def test_ctx_attempt_number_counts_from_one(engine: Engine) -> None:
    numbers: list[int] = []

    def run(payload: Any, ctx: Any) -> int:
        numbers.append(ctx.attempt.number)
        if ctx.attempt.number < 2:
            raise RuntimeError("again")
        return ctx.attempt.number

    t = engine.task(id="attempt-numbers", run=run, retry={"max_attempts": 2,
                                                           "min_timeout_in_ms": 1})
    assert t.trigger(None).wait(timeout=10).output == 2 and numbers == [1, 2]


def test_logger_levels_and_attributes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Logger, "level", "info")
    monkeypatch.delenv("NBTASKS_LOG_LEVEL", raising=False)

    @engine.task(id="logs")
    async def log_all(payload: Any, ctx: Any) -> None:
        nbtasks.logger.debug("quiet")
        nbtasks.logger.log("plain")
        nbtasks.logger.info("loaded", rows=120)
        nbtasks.logger.warn("careful")
        nbtasks.logger.error("broken", code=7)

    handle = log_all.trigger(None)
    handle.wait(timeout=10)
    assert logs(engine, handle.id) == [("log", "plain"), ("info", "loaded"), ("warn", "careful"),
                                       ("error", "broken")]
    attrs = engine.store.select(
        "SELECT message, attributes FROM logs WHERE run_id=? AND attributes IS NOT NULL"
        " ORDER BY ts", (handle.id,))[1]
    assert attrs == [("loaded", '{"rows":120}'), ("broken", '{"code":7}')]

    engine.configure(log_level="debug")
    verbose = log_all.trigger(None)
    verbose.wait(timeout=10)
    assert ("debug", "quiet") in logs(engine, verbose.id)
    engine.configure(log_level="error")
    terse = log_all.trigger(None)
    terse.wait(timeout=10)
    assert logs(engine, terse.id) == [("error", "broken")]


@pytest.mark.parametrize("sync_body", [False, True])
def test_logger_attributes_json_cannot_hold_are_kept_as_text(engine: Engine,
                                                              sync_body: bool) -> None:
    def body(payload: Any, ctx: Any) -> str:
        nbtasks.logger.info("odd attributes", when=datetime(2026, 1, 2, tzinfo=UTC), n=1)
        return "still fine"

    async def async_body(payload: Any, ctx: Any) -> str:
        return body(payload, ctx)

    t = engine.task(id=f"odd-attrs-{sync_body}", run=body if sync_body else async_body)
    handle = t.trigger(None)
    assert handle.wait(timeout=10).output == "still fine"  # a log call never fails a run
    rows = engine.store.select("SELECT message, attributes FROM logs WHERE run_id=?",
                               (handle.id,))[1]
    assert rows == [("odd attributes", '{"when":"2026-01-02 00:00:00+00:00","n":1}')]


def test_logger_outside_a_run_records_nothing(engine: Engine) -> None:
    before = engine.store.select("SELECT COUNT(*) FROM logs")[1][0][0]
    nbtasks.logger.info("not in a run")
    engine.runs.list()
    assert engine.store.select("SELECT COUNT(*) FROM logs")[1][0][0] == before


@pytest.mark.parametrize("sync_body", [False, True])
def test_print_and_logging_go_to_the_run_log_not_the_cell(
    db_path: Path, capsys: pytest.CaptureFixture[str], sync_body: bool,
) -> None:
    log = logging.getLogger("user.module")
    log.setLevel(logging.INFO)

    def body(payload: Any, ctx: Any) -> str:
        print("hello from the run")
        print("two", "parts", end="")
        print(" joined")
        print("to stderr", file=sys.stderr)
        log.info("via logging %d", 42)
        log.warning("warned")
        return "done"

    async def async_body(payload: Any, ctx: Any) -> str:
        return body(payload, ctx)

    # Created inside the test, so its capture wraps the streams this test's cell writes to.
    with Engine(store=str(db_path)) as eng:
        t = eng.task(id="printer", run=body if sync_body else async_body)
        print("outside the run")
        handle = t.trigger(None)
        assert handle.wait(timeout=10).output == "done"
        lines = logs(eng, handle.id)
    out = capsys.readouterr()
    assert out.out == "outside the run\n"
    assert out.err == ""
    assert lines == [("info", "hello from the run"), ("info", "two parts joined"),
                     ("error", "to stderr"), ("info", "via logging 42"), ("warn", "warned")]


def test_print_in_a_script_is_captured_and_not_printed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import nbtasks
        with nbtasks.Engine(store={str(tmp_path / 'runs.db')!r}) as eng:
            @eng.task(id="noisy")
            def noisy(payload, ctx):
                print("SECRET-FROM-RUN")
                return 1
            h = noisy.trigger(None)
            h.wait(timeout=10)
            rows = eng.store.select("SELECT message FROM logs WHERE run_id=?", (h.id,))[1]
            print("LOGGED", rows)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SECRET-FROM-RUN" not in proc.stdout.replace("LOGGED [('SECRET-FROM-RUN',)]", "")
    assert "LOGGED [('SECRET-FROM-RUN',)]" in proc.stdout
    assert proc.stderr == ""


def test_signal_is_an_event_like_flag() -> None:
    signal = CancelSignal()
    assert not signal.aborted and signal.reason is None
    signal.abort("cancel")
    signal.abort("timeout")  # the first reason wins
    assert signal.aborted and signal.is_set() and signal.reason == "cancel"


def test_ctx_run_is_the_snapshot_taken_when_the_attempt_started(engine: Engine) -> None:
    """ctx.run is made on first read, but says what the run was when its attempt started:
    tags added by the body since don't show in it, and it reads as a TaskContext."""

    @engine.task(id="snap")
    async def snap(payload: Any, ctx: Any) -> dict[str, Any]:
        nbtasks.tags.add("added")
        return {"tags": list(ctx.run.tags), "again": ctx.run is ctx.run,
                "attempt": ctx.attempt.number, "repr": repr(ctx).split("(")[0],
                "type": isinstance(ctx, nbtasks.TaskContext)}

    handle = snap.trigger(None, tags=["first"])
    assert handle.wait(timeout=10).output == {"tags": ["first"], "again": True, "attempt": 1,
                                               "repr": "TaskContext", "type": True}
    assert engine.runs.retrieve(handle.id).tags == ["first", "added"]
