"""The disk fills up under a running engine, then is cleared.

A child process runs the engine with its file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) set
just above the store's size, which is what a full disk looks like to SQLite. Then:

- a cell's `trigger()` raises StoreError with SQLite's own error and the path (not "cannot
  rollback - no transaction is active"), records nothing and runs nothing;
- a run triggered inside the engine waits unstarted while the writer retries, and the engine
  says why (`store_problem`, one warning);
- once the limit is lifted ("the disk is cleared") everything kept is written and run, as the
  file shows after reopening it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r'''
import asyncio, json, logging, os, resource, signal, sys, threading
from nbtasks import Engine, StoreError
from nbtasks.stores.sqlite import SQLiteStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not the process
db = sys.argv[1]
warned = threading.Event()

class Told(logging.Handler):
    def emit(self, record):
        if "can't write" in record.getMessage():
            warned.set()

logging.getLogger("nbtasks").addHandler(Told())
ran, out = [], {}
eng = Engine(store=SQLiteStore(db, busy_timeout=1))
big = "x" * 300_000
started, go = threading.Event(), asyncio.Event()

@eng.task(id="work")
def work(p, ctx):
    ran.append(p["i"])
    return {"i": p["i"]}

@eng.task(id="parent")
async def parent(p, ctx):
    started.set()
    await go.wait()
    child = work.trigger({"i": "child", "pad": big})  # on the loop: kept until recorded
    return (await child).output

for i in range(3):
    work.trigger({"i": i}).wait(timeout=10)
handle = parent.trigger(None)
started.wait(10)
eng.runtime.call(eng.writer.barrier)  # the parent's EXECUTING is on disk
size = lambda p: os.path.getsize(p) if os.path.exists(p) else 0
limit = max(size(db), size(db + "-wal")) + 20_000
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    work.trigger({"i": "cell", "pad": big})
    out["trigger"] = None
except StoreError as exc:
    out["trigger"] = str(exc)
try:  # a batch commits in one transaction: all of it, or none
    work.batch_trigger([{"i": f"b{k}", "pad": big} for k in range(3)])
    out["batch"] = None
except StoreError as exc:
    out["batch"] = str(exc)
eng.runtime.loop.call_soon_threadsafe(go.set)
out["warned"] = warned.wait(20)
out["problem"] = eng.store_problem
out["ran_while_full"] = list(ran)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
out["parent"] = handle.wait(timeout=20).output
out["problem_after"] = eng.store_problem
out["ran"] = list(ran)
eng.close()
print(json.dumps(out))
'''


@pytest.mark.timeout(90)
def test_full_disk_runs_nothing_unrecorded_and_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(db)], capture_output=True,
                          text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    err = out["trigger"]
    assert err is not None, "trigger() returned on a full disk"
    assert str(db) in err
    assert "cannot rollback" not in err
    assert "full" in err or "I/O" in err, err  # SQLite's own words for the write that failed
    batch_err = out["batch"]
    assert batch_err is not None, "batch_trigger() returned on a full disk"
    assert str(db) in batch_err and "cannot rollback" not in batch_err
    assert "full" in batch_err or "I/O" in batch_err, batch_err
    assert out["warned"]
    assert out["problem"] is not None and str(db) in out["problem"]
    assert out["ran_while_full"] == [0, 1, 2]  # the child waited, unstarted, for its commit
    assert out["parent"] == {"i": "child"}
    assert out["problem_after"] is None
    assert out["ran"] == [0, 1, 2, "child"]
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        assert statuses == [("COMPLETED", 5)]  # 3 + parent + child; the refused cell run: none
        assert con.execute("SELECT COUNT(*) FROM runs WHERE payload LIKE '%cell%' "
                           "OR payload LIKE '%\"b_\"%'").fetchone()[0] == 0
    finally:
        con.close()
    intake = sqlite3.connect(f"{db}-intake")
    try:  # nothing of the refused batch was left in the intake either
        assert intake.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert intake.execute("SELECT COUNT(*) FROM intake").fetchone()[0] == 0
    finally:
        intake.close()
