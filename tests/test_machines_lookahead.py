"""A busy worker holds attempts queued behind its run (up to `LOOKAHEAD`) while runs wait for
workers. A queued attempt has not started: it is never lost and never runs twice, whether its
worker is killed, its run is cancelled, or the run ahead of it waits on it. What a worker sends
is JSON only, and the kernel's size limits hold in workers too."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from test_machines import wait_until as poll_until

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks._payload import reset_limits
from nbtasks.executors._pool import LOOKAHEAD
from nbtasks.executors.process import ProcessExecutor

pytestmark = pytest.mark.timeout(90)

MakeEngine = Callable[..., Engine]


wait_until = partial(poll_until, timeout=30.0)  # these wait behind a busy worker


def _blocker(eng: Engine, go: Path) -> Any:
    """A run that says its pid in metadata, then holds its worker until `go` exists."""

    @eng.task(id="blocker", machine="micro", retry=None)
    def blocker(payload: None, ctx: Any) -> int:
        nbtasks.metadata.set("pid", os.getpid())
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()

    return blocker


def _counted(eng: Engine, ran: Path) -> Any:
    """A run that leaves one line in `ran` per execution."""

    @eng.task(id="counted", machine="micro", retry={"max_attempts": 3, "min_timeout_in_ms": 10})
    def counted(payload: None, ctx: Any) -> int:
        with ran.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return os.getpid()

    return counted


def _queued_behind(eng: Engine) -> bool:
    executor = eng.preset_executor
    assert isinstance(executor, ProcessExecutor)
    pool = executor.pools.get("micro")
    return pool is not None and any(len(w.lanes) == 2 for w in list(pool.workers))


def _start_blocked(eng: Engine, go: Path) -> tuple[Any, int]:
    handle = _blocker(eng, go).trigger(None)
    pid = wait_until(lambda: eng.runs.retrieve(handle.id).metadata.get("pid"))
    return handle, pid


def test_a_run_queued_behind_a_killed_worker_runs_once_elsewhere(
        process_engine: MakeEngine, tmp_path: Path, db_path: Path) -> None:
    eng = process_engine(max_workers=1)
    go, ran = tmp_path / "go", tmp_path / "ran"
    blocked, pid = _start_blocked(eng, go)
    queued = _counted(eng, ran).trigger(None)
    wait_until(lambda: _queued_behind(eng))  # sent to the busy worker, behind the blocker
    os.kill(pid, signal.SIGKILL)
    result = queued.wait(timeout=30)
    assert result.ok and result.output != pid  # on the replacement
    assert blocked.wait(timeout=30).status is RunStatus.CRASHED
    eng.close()
    assert ran.read_text().splitlines() == [str(result.output)]  # ran once
    with Engine(store=str(db_path)) as reopened:
        run = reopened.runs.retrieve(queued.id)
        assert run.status is RunStatus.COMPLETED
        assert [a.status for a in run.attempts] == ["COMPLETED"]  # no attempt spent by the kill
        crashed = reopened.runs.retrieve(blocked.id)
        assert [a.status for a in crashed.attempts] == ["FAILED"]
        assert "SIGKILL" in (crashed.attempts[0].error or {})["message"]


def test_runs_queued_deep_behind_a_killed_worker_run_once_and_a_cancelled_one_never(
        process_engine: MakeEngine, tmp_path: Path, db_path: Path) -> None:
    """A full look-ahead queue: one of its runs cancelled while queued, then the worker killed.
    Every other one comes back and runs exactly once on the replacement, without an attempt
    spent; the cancelled one never runs."""
    assert LOOKAHEAD >= 3, "this test is about a queue deeper than one"
    eng = process_engine(max_workers=1)
    go, ran = tmp_path / "go", tmp_path / "ran"
    blocked, pid = _start_blocked(eng, go)
    counted = _counted(eng, ran)
    queued = [counted.trigger(None) for _ in range(LOOKAHEAD)]
    executor = eng.preset_executor
    assert isinstance(executor, ProcessExecutor)
    wait_until(lambda: [len(w.lanes) for w in executor.pools["micro"].workers]
               == [LOOKAHEAD + 1])  # all of them sent to the busy worker
    assert queued[1].cancel()
    assert queued[1].wait(timeout=30).status is RunStatus.CANCELED
    os.kill(pid, signal.SIGKILL)
    others = [queued[0], *queued[2:]]
    results = [h.wait(timeout=30) for h in others]
    assert all(r.ok and r.output != pid for r in results)
    assert blocked.wait(timeout=30).status is RunStatus.CRASHED
    eng.close()
    assert sorted(ran.read_text().splitlines()) == sorted(str(r.output) for r in results)
    with Engine(store=str(db_path)) as reopened:
        for handle in others:
            run = reopened.runs.retrieve(handle.id)
            assert [a.status for a in run.attempts] == ["COMPLETED"]
        cancelled = reopened.runs.retrieve(queued[1].id)
        assert cancelled.status is RunStatus.CANCELED
        assert [a.status for a in cancelled.attempts] in ([], ["CANCELED"])


def test_a_queued_run_cancelled_never_runs_and_the_run_ahead_finishes(
        process_engine: MakeEngine, tmp_path: Path) -> None:
    eng = process_engine(max_workers=1)
    go, ran = tmp_path / "go", tmp_path / "ran"
    blocked, pid = _start_blocked(eng, go)
    queued = _counted(eng, ran).trigger(None)
    wait_until(lambda: _queued_behind(eng))
    assert queued.cancel()
    assert queued.wait(timeout=30).status is RunStatus.CANCELED
    go.touch()  # the worker reads the skip once the blocker is done, and answers it first
    ahead = blocked.wait(timeout=30)
    assert ahead.ok and ahead.output == pid  # its worker was not killed for the cancel
    executor = eng.preset_executor
    assert isinstance(executor, ProcessExecutor)
    pool = executor.pools["micro"]
    wait_until(lambda: [w.claims for w in pool.workers] == [0])  # both gave the worker back
    again = eng.task(id="again", machine="micro", run=lambda p, ctx: os.getpid())
    assert again.trigger(None).wait(timeout=30).output == pid  # still warm, still the one
    assert not ran.exists()


def test_a_run_waiting_on_a_child_queued_behind_it_gets_the_child_back(
        process_engine: MakeEngine, tmp_path: Path) -> None:
    eng = process_engine(max_workers=1)
    ran = tmp_path / "ran"
    child = _counted(eng, ran)
    started = tmp_path / "started"

    @eng.task(id="parent", machine="micro", retry=None)
    def parent(payload: None, ctx: Any) -> Any:
        handle = child.trigger(None)  # no wait yet: the child can queue behind this run
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return handle.wait(timeout=30).output  # waits: what is queued behind comes back

    run = parent.trigger(None)
    wait_until(lambda: _queued_behind(eng))
    started.touch()
    result = run.wait(timeout=60)
    assert result.ok, result.error
    assert ran.read_text().splitlines() == [str(result.output)]


class Planted:
    """Unpickling this makes a directory: proof that the kernel unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def test_a_pickle_sent_up_a_worker_pipe_is_never_unpickled(
        process_engine: MakeEngine, tmp_path: Path) -> None:
    eng = process_engine(max_workers=1)
    planted = tmp_path / "planted"

    @eng.task(id="forger", machine="micro", retry=None)
    def forger(payload: str, ctx: Any) -> str:
        from nbtasks.executors._remote import PROCESS_REMOTE

        channel: Any = PROCESS_REMOTE[0].channel
        with channel.lock:  # a frame on the pipe, as the worker's own messages are
            key = f"{ctx.run.id}/{ctx.attempt.number}"
            channel.conn.send_bytes(pickle.dumps(("log", key, Planted(payload))))
        nbtasks.logger.info("after the forged frame")
        return "sent"

    result = forger.trigger(str(planted)).wait(timeout=30)
    assert result.ok and result.output == "sent"
    assert not planted.exists()
    assert "after the forged frame" in list(eng.runs.logs(result.id)["message"])


def test_the_kernels_size_limits_hold_in_a_worker(process_engine: MakeEngine) -> None:
    eng = process_engine(max_workers=1)
    big = eng.task(id="big", machine="micro", retry=None, run=lambda n, ctx: "x" * n)
    assert big.trigger(2000).wait(timeout=30).ok  # the worker is warm, its defaults loaded
    nbtasks.configure(limits={"output_bytes": 1000})
    try:
        refused = big.trigger(2000).wait(timeout=30)
        assert refused.status is RunStatus.FAILED
        assert "output_bytes" in str(refused.error)
        assert big.trigger(500).wait(timeout=30).ok
    finally:
        reset_limits()
    assert big.trigger(2000).wait(timeout=30).ok  # and back to the defaults


def test_a_worker_whose_memory_stays_high_retires_and_what_it_queued_runs_elsewhere(
        process_engine: MakeEngine, tmp_path: Path) -> None:
    eng = process_engine(max_workers=1)
    go, ran = tmp_path / "go", tmp_path / "ran"

    @eng.task(id="leaky", machine="micro", retry=None)
    def leaky(payload: None, ctx: Any) -> int:
        import builtins

        nbtasks.metadata.set("pid", os.getpid())
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        # 160 MB kept past the run: over half of micro's 250 MB, under all of it
        builtins._kept = [bytearray(8 * 1024**2) for _ in range(20)]  # type: ignore[attr-defined]
        return os.getpid()

    first = leaky.trigger(None)
    pid = wait_until(lambda: eng.runs.retrieve(first.id).metadata.get("pid"))
    queued = _counted(eng, ran).trigger(None)
    wait_until(lambda: _queued_behind(eng))
    go.touch()
    assert first.wait(timeout=30).output == pid
    result = queued.wait(timeout=30)
    assert result.ok and result.output != pid  # not on the worker that kept 160 MB
    assert ran.read_text().splitlines() == [str(result.output)]
    assert [a.status for a in eng.runs.retrieve(queued.id).attempts] == ["COMPLETED"]


def test_a_request_a_worker_cant_say_in_json_raises_in_the_run(
        process_engine: MakeEngine) -> None:
    eng = process_engine(max_workers=1)
    other = eng.task(id="other", run=lambda p, ctx: p)

    @eng.task(id="asker", machine="micro", retry=None)
    def asker(payload: None, ctx: Any) -> str:
        try:
            other.trigger(None, metadata={"lock": object()})
        except TypeError as exc:
            return str(exc)
        return "sent"

    result = asker.trigger(None).wait(timeout=30)
    assert result.ok and result.output is not None
    assert "object can't be sent to the kernel from a worker" in result.output
    assert len(eng.runs.list(task_id="other")) == 0  # refused in the run: nothing recorded
