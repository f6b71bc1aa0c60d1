"""A plain script, with no `if __name__ == "__main__":` guard, triggers a preset run.

Workers must never import the user's `__main__`: if they did, the script would run again in
each of them (its side effects twice, a multiprocessing bootstrap traceback, a stray run).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

#: Put first in each script: should it hang, it prints every thread's stack and exits (code 1)
#: before the test's own time limit kills it silently.
DUMP_IF_HUNG = "import faulthandler; faulthandler.dump_traceback_later(80, exit=True)\n"

SCRIPT = textwrap.dedent('''
    import os
    import nbtasks
    from nbtasks import Engine
    from nbtasks.executors import ProcessExecutor

    with open("side-effects.txt", "a") as f:
        f.write(f"{os.getpid()}\\n")

    BONUS = 40

    def work(payload, ctx):
        return payload + BONUS

    eng = Engine(store="runs.db", executor=ProcessExecutor(max_workers=2))
    task = eng.task(id="work", machine="micro", run=work)
    print(task.trigger(2).wait(timeout=60).output)
    print(task.batch_trigger([1, 2, 3]).wait(timeout=60)[2].output)
    eng.close()
''')


@pytest.mark.timeout(120)
def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(DUMP_IF_HUNG + SCRIPT)
    done = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", "43"]
    assert "Traceback" not in done.stderr and "bootstrapping" not in done.stderr, done.stderr
    assert len((tmp_path / "side-effects.txt").read_text().split()) == 1
    with closing(sqlite3.connect(f"file:{tmp_path / 'runs.db'}?mode=ro", uri=True)) as db, db:
        statuses = [s for (s,) in db.execute("SELECT status FROM runs")]
    assert sorted(statuses) == ["COMPLETED"] * 4


# A worker slow to say it is ready (a loaded host) while the engine closes: the pool gave it
# nothing yet, so only its start-up knows it. Its "ready" is held back here (the one stand-in:
# a real worker answers in milliseconds, too fast to close in between on purpose).
CLOSE_WHILE_STARTING = textwrap.dedent('''
    import asyncio, json, threading, time
    import psutil
    from nbtasks import Engine
    from nbtasks.executors import ProcessExecutor, _pool

    started = threading.Event()
    pids = []

    async def slow_to_answer(self, within):
        pids.append(self.pid)
        started.set()
        await asyncio.Event().wait()

    _pool.Worker.wait_ready = slow_to_answer
    eng = Engine(store=":memory:", executor=ProcessExecutor(max_workers=1))
    task = eng.task(id="work", machine="micro", run=lambda payload, ctx: payload)
    task.trigger(1)
    assert started.wait(60)
    eng.close()

    def gone(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 30
    while not gone(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({"gone": gone(pids[0])}), flush=True)
''')


@pytest.mark.timeout(120)
def test_closing_while_a_worker_starts_kills_it_and_the_script_exits(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(DUMP_IF_HUNG + CLOSE_WHILE_STARTING)
    done = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 0, done.stderr  # not hung in multiprocessing's exit hook
    assert json.loads(done.stdout.splitlines()[-1]) == {"gone": True}, done.stderr
