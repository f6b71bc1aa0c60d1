"""Kernel restart recovery, state by state, on a file whose kernel was really SIGKILLed.

A child process (tests/_child_engine.py `state`) puts one run in each state a restart must
handle, on a manual clock at T0, and is killed. Each test starts from a copy of that file with
an engine whose manual clock reads T0 + 30 minutes, and checks docs/design.md, decision 7: recorded delays and
TTLs keep their times, executing attempts fail with KernelRestartError and retry under their
policy once the task is defined, waiting attempts resume with their waits replayed.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine, RunStatus
from nbtasks._recovery import _alive
from nbtasks._tasks import Registry
from nbtasks.testing import ManualClock

sys.path.insert(0, str(Path(__file__).parent))
from _child_engine import T0, state_tasks

S = RunStatus
CHILD = Path(__file__).with_name("_child_engine.py")


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The killed kernel's files (db, -wal, -shm) and the ids of its runs."""
    folder = tmp_path_factory.mktemp("crashed")
    db = folder / "runs.db"
    proc = subprocess.Popen([sys.executable, str(CHILD), "state", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert line.endswith("\n"), err
    return db, json.loads(line)


@pytest.fixture
def copy(crashed: tuple[Path, dict[str, str]], tmp_path: Path) -> tuple[str, dict[str, str]]:
    db, ids = crashed
    target = tmp_path / "runs.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy2(f"{db}{suffix}", f"{target}{suffix}")
    return str(target), ids


def _registry(*, undeployed: bool = False) -> Registry:
    registry = Registry()
    state_tasks(registry, blocking=False)
    if undeployed:
        registry_task(registry)
    return registry


def registry_task(registry: Registry) -> None:
    from nbtasks._tasks import TaskFactory

    async def undeployed(p: Any, ctx: Any) -> dict[str, int]:
        return {"attempt": ctx.attempt.number}

    TaskFactory(registry)(id="undeployed", run=undeployed)


def _attempts(eng: Engine, run_id: str) -> list[tuple[int, str, str | None]]:
    return [(a.number, a.status, (a.error or {}).get("type"))
            for a in eng.runs.retrieve(run_id).attempts]


def test_restart_recovers_every_state(copy: tuple[str, dict[str, str]],
                                      wait_status: Callable[..., RunStatus]) -> None:
    db, ids = copy
    clock = ManualClock(T0 + 1800)
    with Engine(store=db, clock=clock, registry=_registry()) as eng:
        status = eng.status_of
        # The TTL counted from the recorded queue time: it ran out while the kernel was down.
        assert status(ids["ttl"]) is S.EXPIRED
        # An attempt executing at the kill failed with KernelRestartError ...
        assert _attempts(eng, ids["stuck"])[0] == (1, "FAILED", "KernelRestartError")
        assert status(ids["stuck"]) is S.REATTEMPTING
        # ... and with no attempts left under its policy, the run failed.
        assert status(ids["last"]) is S.FAILED
        assert eng.runs.retrieve(ids["last"]).error["type"] == "KernelRestartError"
        # Its task is not defined in this kernel: it waits, its retry still to be decided.
        assert status(ids["undeployed"]) is S.WAITING_FOR_DEPLOY
        assert status(ids["later"]) is S.DELAYED
        clock.advance(1)  # the retry's 1 s back-off
        assert eng.wait_result(ids["stuck"], timeout=10).output == {"attempt": 2}
        # A completed token: the resumed attempt finds the same token and its data.
        wait_status(eng, ids["token_never"], S.WAITING)
        (token,) = [t["id"] for t in eng.wait.list_tokens() if t["run_id"] == ids["token_never"]]
        assert eng.wait.complete_token(token, {"approved": True})
        done = eng.wait_result(ids["token_never"], timeout=10).output
        assert done == {"token": token, "ok": True, "output": {"approved": True}}
        # The delayed run and the resumed parent's delayed child are due at T0 + 1h, as recorded.
        clock.advance(1800 - 2)
        assert status(ids["later"]) is S.DELAYED and status(ids["parent"]) is S.WAITING
        assert status(ids["token_soon"]) is S.WAITING
        clock.advance(1)
        assert eng.wait_result(ids["later"], timeout=10).ok
        parent = eng.wait_result(ids["parent"], timeout=10).output
        assert parent["out"] == {"attempt": 1}
        children = [r.id for r in eng.runs.list(task_id="later") if r.parent_id == ids["parent"]]
        assert children == [parent["child"]]  # it waited for the child it had, made no other
        # The token's timeout counted from its creation before the kill: T0 + 1h.
        soon = eng.wait_result(ids["token_soon"], timeout=10).output
        assert soon["ok"] is False
        # The waiting run resumed under the same attempt number; its 2 h wait ends at T0 + 2h.
        clock.advance(3600 - 1)
        assert status(ids["waiter"]) is S.WAITING
        clock.advance(1)
        assert eng.wait_result(ids["waiter"], timeout=10).output == {"attempt": 1}
        assert _attempts(eng, ids["waiter"]) == [(1, "COMPLETED", None)]
        logs = eng.runs.logs(ids["waiter"]).message.tolist()
        assert any("resumed after a kernel restart" in m for m in logs)
        # Defining the missing task now decides its retry under the policy.
        registry_task(eng.registry)
        clock.advance(5)
        assert eng.wait_result(ids["undeployed"], timeout=10).output == {"attempt": 2}
        assert _attempts(eng, ids["undeployed"]) == [(1, "FAILED", "KernelRestartError"),
                                                     (2, "COMPLETED", None)]


def test_second_restart_still_owes_the_retry_decision(copy: tuple[str, dict[str, str]]) -> None:
    db, ids = copy
    registry = Registry()
    with Engine(store=db, clock=ManualClock(T0 + 60), registry=registry) as eng:
        for key in ("last", "undeployed"):
            assert eng.status_of(ids[key]) is S.WAITING_FOR_DEPLOY
    con = sqlite3.connect(db)
    marks = dict(con.execute("SELECT id, recovery FROM runs").fetchall())
    con.close()
    assert marks[ids["last"]] == "restart" and marks[ids["waiter"]] == "resume"
    # A third kernel with the tasks defined: the stored marks say what is owed.
    with Engine(store=db, clock=ManualClock(T0 + 120),
                registry=_registry(undeployed=True)) as eng:
        assert eng.status_of(ids["last"]) is S.FAILED  # max_attempts 1: no retry, even now
        assert _attempts(eng, ids["last"]) == [(1, "FAILED", "KernelRestartError")]
        assert eng.status_of(ids["undeployed"]) is S.REATTEMPTING
        assert eng.runs.retrieve(ids["waiter"]).attempt_count == 1


def test_resume_false_holds_interrupted_runs(copy: tuple[str, dict[str, str]]) -> None:
    db, ids = copy
    clock = ManualClock(T0 + 1800)
    with Engine(store=db, clock=clock, registry=_registry(), resume=False) as eng:
        held = set(eng.runs.interrupted())
        assert {ids[k] for k in ("stuck", "waiter", "later", "parent")} <= held
        clock.advance(7200)
        assert eng.status_of(ids["stuck"]) is S.REATTEMPTING  # held: nothing moved
        assert eng.status_of(ids["later"]) is S.DELAYED
        assert eng.runs.resume_interrupted() == len(held)
        assert eng.runs.interrupted() == []
        clock.advance(1)
        assert eng.wait_result(ids["stuck"], timeout=10).ok
        assert eng.wait_result(ids["waiter"], timeout=10).ok  # its wait ended while held


def test_cancel_interrupted(copy: tuple[str, dict[str, str]]) -> None:
    db, ids = copy
    with Engine(store=db, clock=ManualClock(T0 + 1800), registry=_registry(),
                resume=False) as eng:
        held = eng.runs.interrupted()
        assert eng.runs.cancel_interrupted() == len(held) == len(ids) + 1  # + the child
        for key in ("stuck", "waiter", "later", "parent", "undeployed", "ttl"):
            assert eng.status_of(ids[key]) is S.CANCELED


def test_cancelling_a_resumed_parent_cancels_the_child_it_found(
        copy: tuple[str, dict[str, str]]) -> None:
    db, ids = copy
    with Engine(store=db, clock=ManualClock(T0 + 1800), registry=_registry()) as eng:
        (child,) = [r.id for r in eng.runs.list(task_id="later") if r.parent_id == ids["parent"]]
        parent = eng.scheduler.active[ids["parent"]]
        deadline = time.monotonic() + 10
        while not eng.on_loop(lambda: parent.wait_depth > 0):  # its replay has parked again
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert eng.runs.cancel(ids["parent"])
        assert eng.status_of(child) is S.CANCELED


def test_an_engine_adopts_a_dead_kernels_runs_once(copy: tuple[str, dict[str, str]]) -> None:
    db, ids = copy
    with Engine(store=db, clock=ManualClock(T0 + 1800), registry=_registry()) as first, \
            Engine(store=db, clock=ManualClock(T0 + 1800), registry=_registry()) as second:
        assert ids["stuck"] in first.scheduler.active
        assert second.scheduler.active == {}  # the first kernel is alive: nothing to adopt


def test_a_killed_unreaped_process_counts_as_dead() -> None:
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not _alive(proc.pid, None)
    finally:
        proc.wait(timeout=10)
    assert not _alive(proc.pid, None)
    assert _alive(psutil.Process().pid, psutil.Process().create_time())
