"""A preset's RAM is a real limit: past it the worker is killed and the attempt fails with
OutOfMemoryError; `retry.out_of_memory.machine` moves the run to a bigger preset."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from nbtasks import Engine, OutOfMemoryError, RunStatus

pytestmark = pytest.mark.timeout(90)

MB = 1024**2


def hog(megabytes: int, ctx: Any) -> dict[str, Any]:
    """Touch `megabytes` of memory in 8 MB steps and hold it a moment, like a real job would."""
    chunks = [bytearray(8 * MB) for _ in range(megabytes // 8)]
    time.sleep(0.2)
    return {"held": sum(map(len, chunks)) // MB, "machine": ctx.machine.name, "pid": os.getpid()}


def test_past_micro_ram_fails_with_out_of_memory_then_succeeds_on_small_2x(
        process_engine: Callable[..., Engine]) -> None:
    eng = process_engine(max_workers=1)
    task = eng.task(id="hog", machine="micro", run=hog,
                    retry={"max_attempts": 3, "min_timeout_in_ms": 10, "randomize": False,
                           "out_of_memory": {"machine": "small-2x"}})
    result = task.trigger(400).wait(timeout=60)
    assert result.ok, result.error
    assert result.output is not None
    assert result.output["held"] == 400 and result.output["machine"] == "small-2x"
    run = eng.runs.retrieve(result.id)
    assert [(a.machine, a.status) for a in run.attempts] == [("micro", "FAILED"),
                                                             ("small-2x", "COMPLETED")]
    first = run.attempts[0].error
    assert first is not None and first["type"] == "OutOfMemoryError"
    assert "micro machine's 250 MB" in first["message"]  # a GB is 10**9 bytes, an MB 10**6
    used = int(first["message"].split("used ")[1].split(" MB")[0])
    assert 250 < used <= 400 * 1.05 + 64
    assert run.machine == "small-2x"


def test_without_a_bigger_machine_out_of_memory_is_not_retried(
        process_engine: Callable[..., Engine]) -> None:
    eng = process_engine(max_workers=1)
    task = eng.task(id="hog", machine="micro", run=hog, retry={"max_attempts": 3})
    result = task.trigger(400).wait(timeout=60)
    assert result.status is RunStatus.CRASHED
    assert isinstance(result.error, OutOfMemoryError)
    assert eng.runs.retrieve(result.id).attempt_count == 1


def test_a_run_within_its_ram_is_untouched_and_the_worker_stays_warm(
        process_engine: Callable[..., Engine]) -> None:
    eng = process_engine(max_workers=1)
    task = eng.task(id="hog", machine="small-1x", run=hog)
    first = task.trigger(64).wait(timeout=60)
    second = task.trigger(64).wait(timeout=60)
    assert first.ok and second.ok
    assert first.output is not None and second.output is not None
    assert first.output["pid"] == second.output["pid"]


def test_a_memory_error_raised_by_the_run_counts_as_out_of_memory(
        process_engine: Callable[..., Engine]) -> None:
    eng = process_engine(max_workers=1)

    def short_of_memory(payload: None, ctx: Any) -> str:
        if ctx.machine.name == "micro":
            raise MemoryError("cannot allocate")
        return ctx.machine.name

    task = eng.task(id="short", machine="micro", run=short_of_memory,
                    retry={"min_timeout_in_ms": 10, "out_of_memory": {"machine": "small-1x"}})
    result = task.trigger(None).wait(timeout=60)
    assert result.output == "small-1x"
    first = eng.runs.retrieve(result.id).attempts[0].error
    assert first is not None and first["type"] == "OutOfMemoryError"
    assert "micro machine" in first["message"]


def hold(megabytes: int, ctx: Any) -> None:
    """Touch `megabytes` and keep them far longer than the test waits: only a kill ends it."""
    chunks = [bytearray(8 * MB) for _ in range(megabytes // 8)]
    time.sleep(300)
    del chunks


def test_a_run_holding_memory_past_its_ram_is_killed_while_it_runs(
        process_engine: Callable[..., Engine]) -> None:
    """The kernel's sampling stops it: its result (with its peak) would never come."""
    eng = process_engine(max_workers=1)
    task = eng.task(id="hold", machine="micro", run=hold, retry=None)
    started = time.monotonic()
    result = task.trigger(320).wait(timeout=60)
    assert time.monotonic() - started < 60
    assert result.status is RunStatus.CRASHED
    assert isinstance(result.error, OutOfMemoryError)
    assert "micro machine's 250 MB" in str(result.error)


class _Sampled:
    """What the watcher reads of a worker: its pid (and psutil's figure, off Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)


def test_the_watcher_reads_a_process_resident_memory_and_nothing_once_it_died() -> None:
    import subprocess
    import sys

    import psutil

    from nbtasks.executors._pool import MemoryWatcher

    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; b = bytearray(64 * 2**20); sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    watcher = MemoryWatcher()
    sampled = _Sampled(child.pid)
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).memory_info().rss < 64 * MB:  # still importing
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ours, psutils = watcher._rss(sampled), psutil.Process(child.pid).memory_info().rss
        assert abs(ours - psutils) < 4 * MB and ours >= 64 * MB
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert watcher._rss(sampled) == 0  # the file it holds is that process's, now gone
    watcher._forget([])
    assert not watcher._statm
