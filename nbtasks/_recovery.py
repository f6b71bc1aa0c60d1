"""Kernel-restart recovery: adopt the non-final runs of kernels that died.

An engine registers itself (owner id, pid, host, process start time) in the store. On start it
looks for registered engines on this host whose process is gone, and for active runs whose owner
is not registered at all (an engine that closed cleanly while runs were in flight), and takes
their non-final runs over in one UPDATE, so two kernels starting at once cannot both adopt a run.
Attempts that were executing count as failed with KernelRestartError and retry under their
task's policy (DESIGN.md #7); queued, delayed and retrying runs keep their recorded times.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import psutil

from ._runstate import RUN_COLUMNS, RunState
from .stores._base import WriteBatch
from .stores.sqlite import _FINAL_SQL

if TYPE_CHECKING:
    from ._engine import Engine


def _alive(pid: int, started: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def dead_owners(engine: Engine) -> list[str]:
    from ._engine import LIVE_OWNERS

    host = socket.gethostname()
    me = os.getpid()
    dead = []
    _, rows = engine.store.select("SELECT owner, pid, host, process_started FROM engines")
    for owner, pid, owner_host, started in rows:
        if owner == engine.owner or owner_host != host:
            continue
        if pid == me:
            if owner not in LIVE_OWNERS:
                dead.append(owner)
        elif not _alive(pid, started):
            dead.append(owner)
    _, rows = engine.store.select(
        f"SELECT DISTINCT owner FROM runs WHERE status NOT IN {_FINAL_SQL} AND owner NOT IN "
        "(SELECT owner FROM engines)")
    dead.extend(r[0] for r in rows if r[0] != engine.owner)
    return dead


def recover(engine: Engine) -> int:
    """Register this engine and adopt orphaned runs. Runs on the engine loop at start."""
    proc = psutil.Process()
    dead = dead_owners(engine)
    batch = WriteBatch(statements=[(
        "INSERT OR REPLACE INTO engines (owner, pid, host, started_at, process_started) "
        "VALUES (?, ?, ?, ?, ?)",
        (engine.owner, os.getpid(), socket.gethostname(), engine.clock.now(), proc.create_time()),
    )])
    if dead:
        marks = ", ".join("?" * len(dead))
        batch.statements.append((
            f"UPDATE runs SET owner = ? WHERE owner IN ({marks}) AND status NOT IN {_FINAL_SQL}",
            (engine.owner, *dead)))
        batch.statements.append((f"DELETE FROM engines WHERE owner IN ({marks})", tuple(dead)))
    engine.store.write(batch)
    cols, rows = engine.store.select(
        f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE owner = ? AND status NOT IN {_FINAL_SQL}"
        " ORDER BY seq", (engine.owner,))
    for row in rows:
        engine.scheduler.adopt(RunState.from_row(dict(zip(cols, row, strict=True))))
    return len(rows)
