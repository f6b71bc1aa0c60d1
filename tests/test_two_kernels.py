"""Two kernels, one file: two processes share `.nbtasks/runs.db` from its very first open.

Each executes only its own runs, both read the whole history, nothing is corrupted and neither
sees "database is locked" (WAL lets readers beside the one writer; the busy timeout makes a
writer wait for the other's short group commit instead of failing).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("_child_engine.py")
N = 600
PER_KERNEL = N + 5 * (N // 100)  # batches of 100 plus five plain triggers after each


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_share_one_file(tmp_path: Path) -> None:
    db = tmp_path / ".nbtasks" / "runs.db"  # does not exist yet: both race to create it
    procs = {tag: subprocess.Popen(
        [sys.executable, str(CHILD), "mine", str(db), tag, str(N), str(2 * PER_KERNEL)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")}
    report = {}
    for tag, proc in procs.items():
        out, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
        report[tag] = json.loads(out.splitlines()[-1])
    for got in report.values():
        assert got["ran"] == got["ok"] == PER_KERNEL
        assert got["seen"] == 2 * PER_KERNEL  # the whole history, the other kernel's too
        assert got["seen_tasks"] == ["own-a", "own-b"]
        assert got["adopted"] == 0  # the other kernel was alive: nothing to take over
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for tag, got in report.items():
            rows = con.execute("SELECT owner, output FROM runs WHERE task_id = ?",
                               (f"own-{tag}",)).fetchall()
            assert len(rows) == PER_KERNEL
            assert {owner for owner, _ in rows} == {got["owner"]}  # each ran only its own
            assert {json.loads(output)["pid"] for _, output in rows} == {got["pid"]}
        assert con.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 2 * PER_KERNEL
    finally:
        con.close()
