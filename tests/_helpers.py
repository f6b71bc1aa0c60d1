"""Helpers shared by several test files (not fixtures: plain functions and classes)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from nbtasks import Engine
from nbtasks._runtime import mailbox

NOTEBOOKS_DIR = Path(__file__).parent.parent / "notebooks"


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
    with sqlite3.connect(db_path) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("runs", "attempts", "logs", "waitpoints")}
