"""A warm worker loads a task's functions once: the kernel sends the pickle the first time and
then only its hash. A change in anything the functions carry (a closure's value) is a new
pickle, so a run never sees stale values."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from nbtasks import Engine

pytestmark = pytest.mark.timeout(60)

#: In a worker: how many times a `CountsLoads` was unpickled there.
LOADS = 0


def _loaded() -> CountsLoads:
    global LOADS
    LOADS += 1
    return CountsLoads()


class CountsLoads:
    """Unpickling one counts, in the process that unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_loaded, ())


def test_a_warm_worker_loads_an_unchanged_task_once(process_engine: Callable[..., Engine]) -> None:
    eng = process_engine(max_workers=1)
    marker = CountsLoads()
    box = {"value": 1}

    def run(payload: Any, ctx: Any) -> list[Any]:
        import test_machines_code as here  # the worker's copy of this module

        assert isinstance(marker, CountsLoads)
        return [os.getpid(), here.LOADS, box["value"]]

    task = eng.task(id="counted", machine="micro", run=run)
    first, second = (task.trigger(None).wait(timeout=30).output for _ in range(2))
    assert first is not None and second is not None
    assert first[0] == second[0]  # one warm worker
    assert first[1:] == [1, 1] and second[1:] == [1, 1]  # loaded once, reused
    box["value"] = 2  # what the closure carries changed: new bytes, loaded again
    third = task.trigger(None).wait(timeout=30).output
    assert third == [first[0], 2, 2]
