"""A plain script, with no `if __name__ == "__main__":` guard, triggers a preset run.

Workers must never import the user's `__main__`: if they did, the script would run again in
each of them (its side effects twice, a multiprocessing bootstrap traceback, a stray run).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
    (tmp_path / "job.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", "43"]
    assert "Traceback" not in done.stderr and "bootstrapping" not in done.stderr, done.stderr
    assert len((tmp_path / "side-effects.txt").read_text().split()) == 1
    with sqlite3.connect(f"file:{tmp_path / 'runs.db'}?mode=ro", uri=True) as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM runs")]
    assert sorted(statuses) == ["COMPLETED"] * 4
