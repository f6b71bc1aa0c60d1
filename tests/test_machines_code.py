"""A warm worker loads a task's functions once: the kernel sends the pickle the first time and
then only its hash. A change in anything the functions carry (a closure's value) is a new
pickle, so a run never sees stale values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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


SCRIPT = textwrap.dedent('''
    import json
    import nbtasks
    import nbtasks.executors._wire as wire
    from nbtasks.executors import ProcessExecutor

    pickled = []
    real_dump = wire._Pickler.dump

    def counting_dump(self, obj):
        pickled.append(obj[0].__name__)
        return real_dump(self, obj)

    wire._Pickler.dump = counting_dump

    LIMIT = 10
    settings = {"scale": 1}

    def helper(x):
        return x + LIMIT

    def run(payload, ctx):
        return helper(payload)

    def mutable(payload, ctx):
        return payload * settings["scale"]

    eng = nbtasks.Engine(store=":memory:", executor=ProcessExecutor(max_workers=1))
    task = eng.task(id="cached", machine="micro", run=run)
    other = eng.task(id="mutable", machine="micro", run=mutable)
    out = [task.trigger(i).wait(timeout=60).output for i in range(3)]
    LIMIT = 20  # a global its helper reads was rebound: pickled again, and seen
    out.append(task.trigger(1).wait(timeout=60).output)
    out.append(other.trigger(2).wait(timeout=60).output)
    settings["scale"] = 5  # changed in place: a dict is never trusted, so it is seen too
    out.append(other.trigger(2).wait(timeout=60).output)
    eng.close()
    print(json.dumps({"out": out, "pickled": pickled}))
''')


@pytest.mark.timeout(90)
def test_the_kernel_pickles_an_unchanged_notebook_function_once() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=80)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["out"] == [10, 11, 12, 21, 2, 10]
    assert report["pickled"] == ["run", "run", "mutable", "mutable"]
