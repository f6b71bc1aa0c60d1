"""Helpers shared by several test files (not fixtures: plain functions and classes)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from nbtasks import Engine
from nbtasks._runtime import mailbox

NOTEBOOKS_DIR = Path(__file__).parent.parent / "notebooks"


def read_rows(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """What another process would see: a fresh connection to the file, closed after."""
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def wait_queued(engine: Engine, queue: str, n: int) -> None:
    """Until `queue` holds `n` runs waiting (its runs are handed to the engine lazily)."""
    deadline = time.monotonic() + 30
    while engine.queues.retrieve(queue)["queued"] < n:
        assert time.monotonic() < deadline, engine.queues.retrieve(queue)
        time.sleep(0.01)


def row_in_files(db: Path, run_id: str, columns: str = "status") -> tuple[Any, ...] | None:
    """A run's row as another process would find it on disk: in `runs`, or else still in the
    intake file beside it (where a cell's `trigger()` commits it until the writer folds it in).
    Fresh read-only connections: only what is committed."""
    for path, table in ((db, "runs"), (Path(f"{db}-intake"), "intake")):
        if not path.exists():
            continue
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute(f"SELECT {columns} FROM {table} WHERE id = ?", (run_id,)).fetchone()
        finally:
            con.close()
        if row is not None:
            return tuple(row)
    return None


def ids_in_files(db: Path) -> set[str]:
    """Every run id on disk: in `runs` and in the intake (see `row_in_files`)."""
    ids: set[str] = set()
    for path, table in ((db, "runs"), (Path(f"{db}-intake"), "intake")):
        if path.exists():
            con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
            try:
                ids.update(r[0] for r in con.execute(f"SELECT id FROM {table}"))
            finally:
                con.close()
    return ids


def execute_notebook(path: Path, workdir: Path, timeout: int = 180) -> nbformat.NotebookNode:
    """Run a copy of `path` in `workdir` with a real kernel (its .nbtasks/ lands there).

    A cell's stream outputs are merged into one per stream, as a front-end shows them: the
    kernel sends what a print wrote whenever its flush timer fires, so under load one printed
    line can arrive as two messages, and a test reading the text must not see it split."""
    target = workdir / path.name
    shutil.copy(path, target)
    nb = nbformat.read(target, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


class Gate:
    """An asyncio.Event for async bodies on the engine loop, opened from the test thread."""

    def __init__(self, eng: Engine) -> None:
        self.loop = eng.runtime.loop
        self.event = asyncio.Event()

    async def wait(self) -> None:
        await self.event.wait()

    def open(self) -> None:
        # Through the engine's mailbox, as the engine's own calls are: after the runs the test
        # triggered before, which are handed over lazily.
        mailbox(self.loop).post(self.event.set)


def rows(eng: Engine, db_path: Path) -> dict[str, int]:
    """Row counts per table, read from the file once the engine's writer has caught up."""
    eng.runs.count()  # waits for the writer
    with closing(sqlite3.connect(db_path)) as conn, conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("runs", "attempts", "logs", "waitpoints")}
