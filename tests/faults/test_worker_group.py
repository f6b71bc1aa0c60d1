"""A process a run starts dies with its worker: each worker leads its own process group, and
whatever ends the worker (cancel, max_duration, running out of memory, a crash, the engine
closing) ends the group. Real workers, a real `sleep` grandchild, checked with psutil."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(300)  # starting a worker takes ~1 min on a loaded host


def gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaps yet: init is not always a reaper in a container)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def until(check: Callable[[], Any], timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not true after {timeout}s"
        time.sleep(0.01)
    return value


def start_grandchild_then(how: str, go: Path) -> Callable[[Any, Any], Any]:
    def run(payload: Any, ctx: Any) -> Any:
        child = subprocess.Popen(["sleep", "600"])
        nbtasks.metadata.set("grandchild", child.pid)
        while not go.exists():  # the test has seen the grandchild alive
            time.sleep(0.01)
        if how == "crash":
            os._exit(3)
        if how == "oom":
            hog = [bytearray(8 * 2**20) for _ in range(100)]  # 800 MB on a 250 MB machine
            time.sleep(600)
            return len(hog)
        time.sleep(600)  # until the worker is killed
        return None

    return run


@pytest.mark.parametrize("how", ["cancel", "max_duration", "oom", "crash", "close"])
def test_a_process_started_by_a_run_does_not_outlive_its_worker(
        process_engine: Callable[..., Engine], clock: ManualClock, how: str,
        tmp_path: Path) -> None:
    eng = process_engine(clock=clock, max_workers=1)
    go = tmp_path / "go"
    task = eng.task(id=f"spawns-{how}", machine="micro", run=start_grandchild_then(how, go),
                    retry=None, max_duration=60)
    handle = task.trigger(None)
    pid = until(lambda: eng.runs.retrieve(handle.id).metadata.get("grandchild"))
    grandchild = psutil.Process(pid)
    assert grandchild.is_running() and not gone(pid)
    go.touch()
    expected = {"cancel": RunStatus.CANCELED, "max_duration": RunStatus.TIMED_OUT,
                "oom": RunStatus.CRASHED, "crash": RunStatus.CRASHED}
    if how == "cancel":
        assert handle.cancel()
    elif how == "max_duration":
        clock.advance(61)
    if how == "close":
        eng.close()
    else:
        assert handle.wait(timeout=120).status is expected[how]
    until(lambda: gone(pid))
