"""A store on a real filesystem that fills up (a 2 MiB tmpfs, where this process may mount one).

The trigger that no longer fits raises SQLite's own "database or disk is full" with the path,
never "cannot rollback - no transaction is active"; its body never runs; every run that was
accepted is kept, and once space is freed everything is written and run.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine, StoreError
from nbtasks.stores.sqlite import SQLiteStore


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE "
                    "test covers a full disk")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(60)
def test_a_full_filesystem_raises_sqlites_error_and_loses_nothing(small_fs: Path) -> None:
    db = small_fs / "runs.db"
    filler = small_fs / "filler"
    ran: list[int] = []
    with Engine(store=SQLiteStore(db, busy_timeout=0.5)) as eng:
        @eng.task(id="work")
        def work(p: dict[str, Any], ctx: Any) -> int:
            ran.append(p["i"])
            return int(p["i"])

        filler.write_bytes(b"\0" * 1_200_000)  # what the user frees later
        pad = "x" * 5_000
        accepted = []
        error: StoreError | None = None
        for i in range(2000):
            try:
                accepted.append(work.trigger({"i": i, "pad": pad}))
            except StoreError as exc:
                error = exc
                break
        assert error is not None, "the filesystem never filled up"
        message = str(error)
        assert "database or disk is full" in message and str(db) in message
        assert "cannot rollback" not in message
        failed_i = len(accepted)
        filler.unlink()  # space again: the writer's retries go through
        accepted.append(work.trigger({"i": 1000, "pad": ""}))
        results = eng.wait_results([h.id for h in accepted], timeout=20)
        assert all(r.ok for r in results)
        assert failed_i not in ran  # the refused trigger's body never ran
        assert eng.store_problem is None
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        assert rows == [("COMPLETED", len(accepted))]
    finally:
        con.close()
    assert sorted(ran) == sorted([*range(failed_i), 1000])
    assert os.path.exists(db)
