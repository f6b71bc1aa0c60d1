"""The dashboard's reads: small SQL over the store, returning frozen snapshots.

Every widget reads through here, never through pandas and never from the engine loop's live
objects (those belong to the loop thread). Each query is shaped for an index of the `runs`
table, so a page of a 100,000-run history costs a few milliseconds:

>>> q = RunQuery(task_id="etl", status="FAILED")                  # doctest: +SKIP
>>> rows = page(engine.store, q, now, limit=25, offset=0)
>>> total = count(engine.store, q, now)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._payload import loads
from .._runs import run_filters
from .._status import FINAL, RunStatus
from ..stores import Store

#: The status filter's pseudo-value for "anything not final yet".
ACTIVE = "ACTIVE"
ACTIVE_STATUSES = tuple(s.value for s in RunStatus if s not in FINAL)

_PAGE_COLUMNS = ("id", "task_id", "status", "created_at", "started_at", "finished_at",
                 "updated_at", "attempt_count", "machine", "queue", "tags", "is_test")


@dataclass(frozen=True, slots=True)
class RunQuery:
    """What the runs table shows: filters that combine with AND. Empty means "any"."""

    task_id: str | None = None
    status: str | None = None
    tag: str | None = None
    search: str = ""

    def where(self, now: float) -> tuple[str, list[Any]]:
        status: Any = ACTIVE_STATUSES if self.status == ACTIVE else self.status
        where, params = run_filters(now, task_id=self.task_id or None, status=status or None,
                                    tag=self.tag or None)
        text = self.search.strip()
        if text:
            # ids contain "_", a LIKE wildcard: escape it so "run_ab" means what it says
            like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clause = " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in
                                 ("id", "batch_id", "parent_id", "idempotency_key"))
            where += (" AND " if where else " WHERE ") + f"({clause})"
            params += [like] * 4
        return where, params


@dataclass(frozen=True, slots=True)
class RunRow:
    """One table row: only the light columns (no payload or output)."""

    id: str
    task_id: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float | None
    attempt_count: int
    machine: str
    queue: str
    tags: tuple[str, ...]
    is_test: bool

    @property
    def is_final(self) -> bool:
        return self.status not in ACTIVE_STATUSES

    def duration(self, now: float) -> float | None:
        """Seconds from start to finish, or to `now` while it runs."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else (
            self.updated_at if self.is_final and self.updated_at is not None else now)
        return max(0.0, end - self.started_at)


def _row(r: tuple[Any, ...]) -> RunRow:
    return RunRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] or 0, r[8] or "kernel",
                  r[9] or "", tuple(loads(r[10]) or ()), bool(r[11]))


def page(store: Store, query: RunQuery, now: float, *, limit: int, offset: int) -> list[RunRow]:
    """Newest first, like `runs.list()`."""
    where, params = query.where(now)
    _, rows = store.select(
        f"SELECT {', '.join(_PAGE_COLUMNS)} FROM runs{where} "
        "ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?", (*params, limit, offset))
    return [_row(r) for r in rows]


def row(store: Store, run_id: str) -> RunRow | None:
    _, rows = store.select(f"SELECT {', '.join(_PAGE_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
    return _row(rows[0]) if rows else None


def count(store: Store, query: RunQuery, now: float) -> int:
    where, params = query.where(now)
    return int(store.select(f"SELECT COUNT(*) FROM runs{where}", tuple(params))[1][0][0])


def status_counts(store: Store) -> dict[str, int]:
    """Runs per status over the whole history (served by the status index)."""
    _, rows = store.select("SELECT status, COUNT(*) FROM runs GROUP BY status")
    return {s: int(n) for s, n in rows}


def finished_since(store: Store, since: float, horizon: float = 3600.0) -> int:
    """Runs that ended at or after `since`.

    Only runs created within `horizon` seconds before `since` are considered, so the created_at
    index bounds the scan however long the history is; a run that started over an hour before
    finishing is not a throughput figure anyone reads off a summary line.
    """
    _, rows = store.select(
        "SELECT COUNT(*) FROM runs WHERE created_at >= ? AND finished_at >= ?",
        (since - horizon, since))
    return int(rows[0][0])


def task_ids(store: Store) -> list[str]:
    """Distinct task ids, by hopping along the task index (one probe per task, not per run)."""
    _, rows = store.select(
        "WITH RECURSIVE t(task_id) AS ("
        " SELECT MIN(task_id) FROM runs"
        " UNION ALL"
        " SELECT (SELECT MIN(task_id) FROM runs WHERE task_id > t.task_id) FROM t"
        " WHERE t.task_id IS NOT NULL)"
        " SELECT task_id FROM t WHERE task_id IS NOT NULL")
    return [r[0] for r in rows]


def last_payload(store: Store, task_id: str) -> Any:
    """The newest run's payload for `task_id` (decoded), or None when it never ran."""
    _, rows = store.select(
        "SELECT payload FROM runs WHERE task_id = ? ORDER BY created_at DESC LIMIT 1", (task_id,))
    return loads(rows[0][0]) if rows else None


@dataclass(frozen=True, slots=True)
class LogLine:
    ts: float
    level: str
    message: str
    attributes: dict[str, Any] | None


def logs(store: Store, run_id: str, limit: int = 200) -> list[LogLine]:
    """The newest `limit` log lines of a run, oldest first."""
    _, rows = store.select(
        "SELECT ts, level, message, attributes FROM logs WHERE run_id = ? "
        "ORDER BY ts DESC LIMIT ?", (run_id, limit))
    return [LogLine(ts, level, msg, loads(attrs)) for ts, level, msg, attrs in reversed(rows)]


def children(store: Store, run_id: str, limit: int = 20) -> tuple[list[tuple[str, str, str]], int]:
    """Up to `limit` child runs as (id, task_id, status), and how many there are in all."""
    _, rows = store.select(
        "SELECT id, task_id, status FROM runs WHERE parent_id = ? ORDER BY created_at, seq "
        "LIMIT ?", (run_id, limit))
    total = len(rows)
    if total == limit:
        total = int(store.select("SELECT COUNT(*) FROM runs WHERE parent_id = ?",
                                 (run_id,))[1][0][0])
    return [(r[0], r[1], r[2]) for r in rows], total


def pending_tokens(store: Store, run_id: str) -> list[str]:
    """Ids of wait tokens `run_id` is waiting on (a dashboard button can complete them)."""
    _, rows = store.select(
        "SELECT id FROM waitpoints WHERE run_id = ? AND kind = 'token' AND status = 'WAITING' "
        "ORDER BY created_at", (run_id,))
    return [r[0] for r in rows]


def statuses(store: Store, run_ids: list[str]) -> dict[str, str]:
    """Run id -> status for the given ids (primary-key probes, in chunks SQLite accepts)."""
    out: dict[str, str] = {}
    for i in range(0, len(run_ids), 500):
        chunk = run_ids[i:i + 500]
        _, rows = store.select(
            f"SELECT id, status FROM runs WHERE id IN ({', '.join('?' * len(chunk))})",
            tuple(chunk))
        out.update((r[0], r[1]) for r in rows)
    return out


@dataclass(frozen=True, slots=True)
class Span:
    """A run on the timeline: queued from `created`, executing from `started` to `ended`."""

    queue: str
    status: str
    created: float
    started: float | None
    ended: float | None


def spans(store: Store, since: float, limit: int = 2000) -> list[Span]:
    """Runs created since `since`, plus any older run still going, newest first."""
    marks = ", ".join("?" * len(ACTIVE_STATUSES))
    _, rows = store.select(
        "SELECT * FROM (SELECT id, queue, status, created_at, started_at, finished_at FROM runs "
        "WHERE created_at >= ? ORDER BY created_at DESC LIMIT ?) "
        "UNION SELECT id, queue, status, created_at, started_at, finished_at FROM runs "
        f"WHERE status IN ({marks}) AND created_at < ?",
        (since, limit, *ACTIVE_STATUSES, since))
    return [Span(r[1] or "", r[2], r[3], r[4], r[5]) for r in rows]
