"""A stored run is written as an update of what its life changes; a row found missing is
written whole.

The writer updates a run whose row it has committed instead of rewriting it (half the cost per
state change). If the row is gone when the update comes (the file was edited behind the
engine's back), the update changes nothing, the writer sees that in SQLite's change count and
writes the row whole: the run's end is in the file after reopening it, not lost in the void.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _helpers import Gate

from nbtasks import Engine, RunStatus


def _row(db: Path, run_id: str) -> tuple[str, str | None, str, str | None] | None:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT status, output, task_id, payload FROM runs WHERE id = ?",
                           (run_id,)).fetchone()
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_a_row_deleted_while_its_run_executes_is_written_whole_at_its_end(
        tmp_path: Path, wait_status: Callable[..., Any]) -> None:
    db = tmp_path / "runs.db"
    eng = Engine(store=db)
    gate = Gate(eng)

    async def slow(payload: dict[str, int], ctx: object) -> int:
        await gate.wait()
        return payload["n"] * 2

    task = eng.task(id="slow", run=slow)
    try:
        handle = task.trigger({"n": 21})
        wait_status(eng, handle.id, RunStatus.EXECUTING)
        eng.runs.count()  # the writer has caught up: the EXECUTING row is in the file
        assert _row(db, handle.id) is not None
        con = sqlite3.connect(db)
        with con:
            con.execute("DELETE FROM runs WHERE id = ?", (handle.id,))
        con.close()
        gate.open()
        assert handle.wait().unwrap() == 42
    finally:
        eng.close()
    assert _row(db, handle.id) == ("COMPLETED", "42", "slow", '{"n":21}')


@pytest.mark.timeout(60)
def test_an_update_leaves_the_columns_a_run_never_changes(
        tmp_path: Path, wait_status: Callable[..., Any]) -> None:
    """A key cleared in the file (an expired idempotency key is cleared so) stays cleared when
    the run's end is written: the update names only what a run's life changes."""
    db = tmp_path / "runs.db"
    eng = Engine(store=db)
    gate = Gate(eng)

    async def slow(payload: int, ctx: object) -> int:
        await gate.wait()
        return payload

    task = eng.task(id="slow", run=slow)
    try:
        handle = task.trigger(1, idempotency_key="k1")
        wait_status(eng, handle.id, RunStatus.EXECUTING)
        eng.runs.count()
        con = sqlite3.connect(db)
        with con:
            con.execute("UPDATE runs SET idempotency_key = NULL WHERE id = ?", (handle.id,))
        con.close()
        gate.open()
        handle.wait()
    finally:
        eng.close()
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT status, idempotency_key FROM runs WHERE id = ?",
                           (handle.id,)).fetchone() == ("COMPLETED", None)
    finally:
        con.close()
