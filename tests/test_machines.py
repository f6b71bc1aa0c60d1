"""Machine presets in real worker processes: where runs execute, what reaches the run record,
crashes, cancel and max_duration killing the worker, and the pools themselves."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import nbtasks
from nbtasks import Engine, RunStatus, WorkerCrashedError
from nbtasks._models import MACHINES
from nbtasks.executors.process import ProcessExecutor, pool_size
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(60)

MakeEngine = Callable[..., Engine]


def run_logs(eng: Engine, run_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    _, rows = eng.store.select(
        "SELECT level, message, attributes FROM logs WHERE run_id = ? ORDER BY ts", (run_id,))
    return [(lvl, msg, json.loads(attrs) if attrs else None) for lvl, msg, attrs in rows]


def _gone(pid: int) -> bool:
    """The process has exited (or is a zombie awaiting its parent): it can exit mid-check."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check` every 10 ms until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        time.sleep(0.01)
    return value


def test_a_preset_run_executes_in_a_worker_process_and_its_effects_reach_the_run(
        process_engine: MakeEngine) -> None:
    eng = process_engine()
    offset = 100  # a closure variable: the function travels by value

    @eng.task(id="work", machine="micro")
    def work(payload: int, ctx: Any) -> dict[str, Any]:
        print("printed line")
        logging.getLogger("user.code").warning("a warning")
        nbtasks.logger.info("structured", rows=3)
        nbtasks.metadata.set("progress", 0.5).increment("steps", 2)
        nbtasks.tags.add("from-worker")
        return {"value": payload + offset, "pid": os.getpid(), "machine": ctx.machine.name,
                "memory": ctx.machine.memory, "attempt": ctx.attempt.number,
                "run": ctx.run.id}

    handle = work.trigger(1, tags=["t0"])
    result = handle.wait(timeout=30)
    assert result.ok, result.error
    out = result.output
    assert out is not None
    assert out["value"] == 101 and out["machine"] == "micro" and out["memory"] == 0.25
    assert out["attempt"] == 1 and out["run"] == handle.id
    assert out["pid"] != os.getpid()
    run = eng.runs.retrieve(handle.id)
    assert run.metadata == {"progress": 0.5, "steps": 2}
    assert run.tags == ["t0", "from-worker"]
    assert [a.machine for a in run.attempts] == ["micro"]
    logs = run_logs(eng, handle.id)
    assert ("info", "printed line", {"stream": "stdout"}) in logs
    assert ("warn", "a warning", {"logger": "user.code"}) in logs
    assert ("info", "structured", {"rows": 3}) in logs


def test_large_payloads_and_outputs_cross_in_several_reads(process_engine: MakeEngine) -> None:
    eng = process_engine()
    echo = eng.task(id="echo", machine="micro", run=lambda p, ctx: {"rows": p, "n": len(p)})
    rows = ["x" * 100] * 28_000  # about 2.9 MB of JSON each way: under the 3 MB default limit
    result = echo.trigger(rows).wait(timeout=60)
    assert result.output == {"rows": rows, "n": 28_000}


def test_kernel_machine_stays_in_the_kernel(process_engine: MakeEngine) -> None:
    eng = process_engine()
    task = eng.task(id="here", run=lambda p, ctx: [os.getpid(), ctx.machine.name])
    assert task.trigger(None).wait(timeout=10).output == [os.getpid(), "kernel"]


def test_trigger_machine_wins_over_task_and_configure(process_engine: MakeEngine) -> None:
    eng = process_engine()
    eng.configure(machine="small-1x")
    plain = eng.task(id="plain", run=lambda p, ctx: ctx.machine.name)
    sized = eng.task(id="sized", machine="micro", run=lambda p, ctx: ctx.machine.name)
    assert plain.trigger(None).wait(timeout=30).output == "small-1x"
    assert sized.trigger(None).wait(timeout=30).output == "micro"
    assert sized.trigger(None, machine="small-2x").wait(timeout=30).output == "small-2x"


def test_cpu_is_held_to_whole_cores_and_thread_variables(process_engine: MakeEngine) -> None:
    eng = process_engine()
    host = len(os.sched_getaffinity(0))

    @eng.task(id="cpu")
    def cpu(payload: None, ctx: Any) -> list[Any]:
        return [len(os.sched_getaffinity(0)), os.environ["OMP_NUM_THREADS"],
                os.environ["OPENBLAS_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]]

    micro = cpu.trigger(None, machine="micro").wait(timeout=30).output
    large = cpu.trigger(None, machine="large-1x").wait(timeout=30).output
    assert micro == [1, "1", "1", "1"]
    want = min(4, host)
    assert large == [want, str(want), str(want), str(want)]


def test_the_kernels_cwd_and_environment_reach_a_warm_worker(process_engine: MakeEngine,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    eng = process_engine(max_workers=1)
    probe = eng.task(id="env", machine="micro",
                     run=lambda p, ctx: [os.getcwd(), os.environ.get("NBTASKS_PROBE"),
                                         os.getpid()])
    first = probe.trigger(None).wait(timeout=30).output
    assert first is not None and first[1] is None
    monkeypatch.setenv("NBTASKS_PROBE", "set in a cell")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    second = probe.trigger(None).wait(timeout=30).output
    assert second == [str(tmp_path / "sub"), "set in a cell", first[2]]  # same warm worker


def _die(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "exit":
        os._exit(3)


@pytest.mark.parametrize(("how", "named"), [
    ("sigkill", "killed by signal SIGKILL (9)"),
    ("segfault", "killed by signal SIGSEGV (11)"),
    ("exit", "exited with code 3"),
])
def test_a_dead_worker_fails_the_attempt_naming_how_it_died(
        process_engine: MakeEngine, how: str, named: str) -> None:
    eng = process_engine()
    die = eng.task(id="die", machine="micro", retry=None, run=lambda p, ctx: _die(p))
    result = die.trigger(how).wait(timeout=30)
    assert result.status is RunStatus.CRASHED
    assert isinstance(result.error, WorkerCrashedError)
    assert named in str(result.error) and "micro" in str(result.error)
    assert eng.runs.retrieve(result.id).attempts[0].error["type"] == "WorkerCrashedError"


def test_a_crash_is_retried_on_a_replacement_worker_and_other_runs_go_on(
        process_engine: MakeEngine, tmp_path: Path) -> None:
    eng = process_engine(max_workers=2)
    go = tmp_path / "go"

    @eng.task(id="survivor", machine="micro")
    def survivor(payload: None, ctx: Any) -> int:
        nbtasks.metadata.set("pid", os.getpid())
        deadline = time.monotonic() + 20
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()

    @eng.task(id="crasher", machine="micro",
              retry={"max_attempts": 2, "min_timeout_in_ms": 10, "randomize": False})
    def crasher(payload: None, ctx: Any) -> int:
        if ctx.attempt.number == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    alive = survivor.trigger(None)
    survivor_pid = wait_until(lambda: eng.runs.retrieve(alive.id).metadata.get("pid"))
    crashed = crasher.trigger(None).wait(timeout=30)
    assert crashed.ok
    attempts = eng.runs.retrieve(crashed.id).attempts
    assert [a.status for a in attempts] == ["FAILED", "COMPLETED"]
    assert "SIGKILL" in attempts[0].error["message"]
    assert crashed.output != survivor_pid
    assert alive.status is RunStatus.EXECUTING  # untouched by its neighbour's death
    go.touch()
    assert alive.wait(timeout=20).output == survivor_pid


def _spin_in_c(payload: None, ctx: Any) -> None:
    nbtasks.metadata.set("pid", os.getpid())
    sum(range(10**13))  # one C call that never returns in time and never checks ctx.signal


@pytest.mark.parametrize("ending", ["cancel", "max_duration"])
def test_cancel_and_max_duration_kill_a_worker_stuck_in_c(
        process_engine: MakeEngine, wait_status: Callable[..., RunStatus], ending: str,
        clock: ManualClock) -> None:
    # The engine's clock times max_duration: it moves only once the run is seen stuck, so a
    # slow worker start on a loaded host can't time the run out before it begins.
    eng = process_engine(clock=clock, max_workers=1)
    spin = eng.task(id="spin", machine="micro", run=_spin_in_c,
                    max_duration=60 if ending == "max_duration" else None)
    handle = spin.trigger(None)
    pid = wait_until(lambda: eng.runs.retrieve(handle.id).metadata.get("pid"))
    if ending == "cancel":
        assert handle.cancel()
    else:
        clock.advance(61)
    result = handle.wait(timeout=20)
    assert result.status is (RunStatus.CANCELED if ending == "cancel" else RunStatus.TIMED_OUT)
    wait_until(lambda: _gone(pid))
    # the pool replaced it: the next run gets a fresh worker
    again = eng.task(id="again", machine="micro", run=lambda p, ctx: os.getpid())
    assert again.trigger(None).wait(timeout=30).output not in (None, pid)


def test_an_idle_worker_killed_from_outside_is_replaced(process_engine: MakeEngine) -> None:
    eng = process_engine(max_workers=1)
    whoami = eng.task(id="whoami", machine="micro", run=lambda p, ctx: os.getpid())
    first = whoami.trigger(None).wait(timeout=30).output
    assert isinstance(first, int)
    os.kill(first, signal.SIGKILL)
    executor = eng.preset_executor
    assert isinstance(executor, ProcessExecutor)
    pool = executor.pools["micro"]
    wait_until(lambda: [w.pid for w in pool.idle] not in ([], [first]))
    second = whoami.trigger(None).wait(timeout=30)
    assert second.ok and second.output != first


def test_runs_beyond_the_pool_size_wait_for_a_worker(process_engine: MakeEngine) -> None:
    eng = process_engine(max_workers=2)
    seen = eng.task(id="seen", machine="micro", run=lambda p, ctx: [p, os.getpid()])
    results = seen.batch_trigger(list(range(8))).wait(timeout=60)
    assert [r.output[0] for r in results if r.output] == list(range(8))
    assert len({r.output[1] for r in results if r.output}) <= 2
    executor = eng.preset_executor
    assert isinstance(executor, ProcessExecutor)
    assert len(executor.pools["micro"].workers) <= 2


def test_an_unpicklable_closure_fails_at_once_with_a_clear_error(process_engine: MakeEngine) -> None:
    eng = process_engine()
    lock = threading.Lock()

    def locked(payload: None, ctx: Any) -> bool:
        with lock:
            return True

    task = eng.task(id="locked", machine="micro", run=locked, retry={"max_attempts": 3})
    result = task.trigger(None).wait(timeout=30)
    assert result.status is RunStatus.FAILED
    assert "can't be sent to a micro worker" in str(result.error)
    assert eng.runs.retrieve(result.id).attempt_count == 1


def test_hooks_run_in_the_worker_with_the_run(process_engine: MakeEngine) -> None:
    eng = process_engine()

    def note(name: str) -> Callable[..., None]:
        return lambda *args: nbtasks.logger.info(name, pid=os.getpid())

    task = eng.task(id="hooked", machine="micro", run=lambda p, ctx: os.getpid(),
                    on_start=note("on_start"), init=note("init"), cleanup=note("cleanup"),
                    on_success=note("on_success"))
    result = task.trigger(None).wait(timeout=30)
    hooks = {msg: attrs["pid"] for _, msg, attrs in run_logs(eng, result.id) if attrs}
    assert set(hooks) == {"on_start", "init", "cleanup", "on_success"}
    assert set(hooks.values()) == {result.output}


KERNEL = """
import os, sys, time
from nbtasks import Engine
from nbtasks.executors import ProcessExecutor
eng = Engine(store=":memory:", executor=ProcessExecutor(max_workers=1))
nap = eng.task(id="nap", machine="micro", run=lambda p, ctx: time.sleep(60))
busy = nap.trigger(None)
whoami = eng.task(id="whoami", machine="small-1x", run=lambda p, ctx: os.getpid())
print(whoami.trigger(None).wait(timeout=60).output, flush=True)
time.sleep(60)
"""


def test_workers_die_with_a_killed_kernel() -> None:
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout is not None
        idle = int(kernel.stdout.readline())
        fork_server = psutil.Process(idle).parent()
        assert fork_server is not None
        workers = fork_server.children()
        assert len(workers) == 2  # the busy one, mid-run, and the idle one
        kernel.kill()
        kernel.wait(timeout=10)
        _, alive = psutil.wait_procs([fork_server, *workers], timeout=10)
        assert alive == []
    finally:
        if kernel.poll() is None:
            kernel.kill()
        kernel.wait(timeout=10)
        if kernel.stdout is not None:
            kernel.stdout.close()


def test_pool_sizes_follow_host_cores_and_memory() -> None:
    host = {"cpus": 2, "memory": 24 * 1024**3}
    sizes = {name: pool_size(MACHINES[name], **host) for name in
             ("micro", "small-1x", "small-2x", "medium-1x", "medium-2x", "large-1x", "large-2x")}
    assert sizes == {"micro": 8, "small-1x": 4, "small-2x": 2, "medium-1x": 2, "medium-2x": 1,
                     "large-1x": 1, "large-2x": 1}
    assert pool_size(MACHINES["medium-2x"], cpus=64, memory=8 * 1024**3) == 1
    assert pool_size(MACHINES["micro"], cpus=256, memory=1024**4) == 32
    assert ProcessExecutor(max_workers={"micro": 3}).size_of(MACHINES["micro"]) <= 3


def test_a_preset_bigger_than_the_host_runs_and_says_so_once(process_engine: MakeEngine) -> None:
    eng = process_engine(max_workers=1)
    big = eng.task(id="big", machine="large-2x", run=lambda p, ctx: ctx.machine.name)
    first = big.trigger(None).wait(timeout=30)
    second = big.trigger(None).wait(timeout=30)
    assert first.output == second.output == "large-2x"
    said = [m for r in (first, second) for _, m, _ in run_logs(eng, r.id)
            if "bigger than this host" in m]
    if len(os.sched_getaffinity(0)) < 8 or psutil.virtual_memory().total < 16 * 1024**3:
        assert len(said) == 1
    else:
        assert said == []
