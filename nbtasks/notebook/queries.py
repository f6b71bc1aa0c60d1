"""The dashboard's reads: small SQL over the store, returning frozen snapshots.

Every widget reads through here, never through pandas and never from the engine loop's live
objects (those belong to the loop thread). Each query is shaped for an index of the `runs`
table, so a page of a 100,000-run history costs a few milliseconds:

>>> q = RunQuery(task_id="etl", status="FAILED")                  # doctest: +SKIP
>>> rows = page(engine.store, q, now, limit=25)                # the newest 25
>>> older = page(engine.store, q, now, limit=25, after=Cursor.of(rows[-1]))
>>> total = count(engine.store, q, now)

Pages are keyset ("cursor") pages on `(sort key, id)`, not offsets: a page anchored at a run
keeps showing that run while newer runs arrive above it, and opening a page deep in a big
history costs the same as the first one. The sort key is `created_at` by default (served by its
index); `Order("started")` and `Order("duration")` sort on an expression that is never NULL, so
the cursor can compare it, and whose value a run only gets once (when it starts, or when it
ends): until then a run sorts as if its key were infinite (first when descending).

Every page, position and count is a range of an index, never a scan of the history: a cursor is
compared as `key <= ? AND (key < ? OR id < ?)`, which SQLite seeks to, where the equivalent
`key < ? OR (key = ? AND id < ?)` or a row value `(key, id) < (?, ?)` on an expression makes it
read the index (or the table) from one end and test each entry. The "started" and "duration"
sorts read a partial index (schema version 5) merged with the queued runs that index leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._payload import loads_or, tags_of, valid_json
from .._runs import run_filters
from .._spans import SPAN_LEVEL
from .._status import FINAL, RunStatus
from ..stores import Store
from ..stores.sqlite import DURATION_KEY, NOT_YET, SORTED_RUNS, STARTED_KEY

#: The status filter's pseudo-value for "anything not final yet".
ACTIVE = "ACTIVE"
ACTIVE_STATUSES = tuple(s.value for s in RunStatus if s not in FINAL)

_PAGE_COLUMNS = ("id", "task_id", "status", "created_at", "started_at", "finished_at",
                 "updated_at", "attempt_count", "machine", "queue", "tags", "is_test",
                 "delay_until")


@dataclass(frozen=True, slots=True)
class RunQuery:
    """What the runs table shows: filters that combine with AND. Empty means "any".

    `tags` match any of them, or all of them with `all_tags=True`; `since` is seconds back
    from now (the time-range filter); `test` is None (any), True (test runs) or False.
    """

    task_id: str | None = None
    status: str | None = None
    tag: str | None = None
    search: str = ""
    tags: tuple[str, ...] = ()
    all_tags: bool = False
    since: float | None = None
    queue: str | None = None
    machine: str | None = None
    test: bool | None = None
    batch_id: str | None = None
    schedule_id: str | None = None
    since_at: float | None = None
    until_at: float | None = None

    def where(self, now: float) -> tuple[str, list[Any]]:
        """`since_at`/`until_at` are a custom time range (epoch seconds, from inclusive, to
        exclusive), applied with `since` if both are given; `schedule_id` keeps the runs that
        schedule created."""
        status: Any = ACTIVE_STATUSES if self.status == ACTIVE else self.status
        tags = [*self.tags, *([self.tag] if self.tag else [])]
        where, params = run_filters(
            now, task_id=self.task_id or None, status=status or None,
            tag=None if self.all_tags or not tags else tags,
            since=None if self.since is None else self.since,
            is_test=self.test, batch_id=self.batch_id or None)
        clauses: list[str] = []
        for op, bound in ((">=", self.since_at), ("<", self.until_at)):
            if bound is not None:
                clauses.append(f"runs.created_at {op} ?")
                params.append(float(bound))
        if self.schedule_id:
            # A scheduled run carries its schedule only in its payload (ScheduledPayload), so
            # the schedule's task bounds the scan to that task's index range first.
            clauses.append("runs.task_id IN (SELECT task_id FROM schedules WHERE id = ?) "
                           f"AND json_extract({valid_json('runs.payload')}, '$.schedule_id') = ?")
            params += [self.schedule_id, self.schedule_id]
        if self.all_tags:
            clauses += [f"EXISTS (SELECT 1 FROM json_each({valid_json('runs.tags')}) "
                        "WHERE value = ?)"] * len(tags)
            params += tags
        for column, value in (("queue", self.queue), ("machine", self.machine)):
            if value:
                clauses.append(f"runs.{column} = ?")
                params.append(value)
        text = self.search.strip()
        if text:
            # ids contain "_", a LIKE wildcard: escape it so "run_ab" means what it says
            like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in
                                             ("id", "batch_id", "parent_id", "idempotency_key"))
                           + ")")
            params += [like] * 4
        if clauses:
            where += (" AND " if where else " WHERE ") + " AND ".join(clauses)
        return where, params

    @property
    def is_empty(self) -> bool:
        return self == RunQuery()


#: The sorts the table offers: the key's name -> (label when descending, when ascending).
SORTS = {"created": ("newest first", "oldest first"),
         "started": ("started, latest first", "started, earliest first"),
         "duration": ("longest first", "shortest first")}

#: The sort keys, as never-NULL SQL expressions, spelled exactly as the store's indexes spell
#: them (nbtasks/stores/sqlite.py, schema version 5), so that SQLite reads a page from an index
#: instead of sorting the whole history.
SORT_KEYS = {"created": "created_at", "started": STARTED_KEY, "duration": DURATION_KEY}
#: The runs a sort's index holds ("started", "duration"), and the rest: queued runs that never
#: started, whose key is NOT_YET (found through the status index; few unless a queue is backed
#: up). A page of either sort is the merge of the two, each read in key order.
_INDEXED = SORTED_RUNS
_QUEUED = f"started_at IS NULL AND status IN ({', '.join(repr(s) for s in ACTIVE_STATUSES)})"


@dataclass(frozen=True, slots=True)
class Order:
    """A sort: `key` is "created", "started" or "duration"; newest/latest/longest first unless
    `ascending`."""

    key: str = "created"
    ascending: bool = False

    def __post_init__(self) -> None:
        if self.key not in SORTS:
            raise ValueError(f"sort key: expected one of {', '.join(SORTS)}, got {self.key!r}")

    @property
    def sql(self) -> str:
        """The key as a never-NULL SQL expression (so keyset comparisons see every run).

        "created" is the bare column, so its index serves the order. "duration" counts only
        final runs: a running run's duration grows every second, and a key that moves under a
        cursor would show a run twice or never. A run without the key yet sorts as if it were
        infinitely late or long: first when descending, last when ascending."""
        return SORT_KEYS[self.key]

    @property
    def label(self) -> str:
        return SORTS[self.key][self.ascending]


NEWEST = Order()


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in an order: the run with sort key `key` (its `created_at` in the default
    order) and `id`. A cursor belongs to the order its row was read in."""

    key: float
    id: str

    @classmethod
    def of(cls, row: RunRow) -> Cursor:
        return cls(row.created_at if row.key is None else row.key, row.id)


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
    delay_until: float | None = None
    #: The sort key's value as SQLite computed it (what a cursor on this row compares).
    key: float | None = None

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

    def waited(self, now: float) -> float | None:
        """Seconds in the queue before the first attempt started (to `now` while still queued);
        a delayed run's wait counts from its start time, not its creation."""
        begin = max(self.created_at, self.delay_until or 0.0)
        if self.started_at is not None:
            return max(0.0, self.started_at - begin)
        if self.is_final or self.status == "DELAYED":
            return None
        return max(0.0, now - begin)


def _row(r: tuple[Any, ...]) -> RunRow:
    return RunRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] or 0, r[8] or "kernel",
                  r[9] or "", tags_of(r[10]), bool(r[11]), r[12],
                  r[13] if len(r) > 13 else None)


def _beyond(key: str, order: Order, forward: bool, inclusive: bool = False) -> str:
    """The runs after a cursor in `order` (`forward`), or before it: `(key, id)` compared as a
    pair, id breaking ties so runs with equal keys are neither skipped nor repeated. Spelled so
    that the leading `key <= ?` (or `>=`) is a range SQLite seeks to in the key's index."""
    op = ">" if order.ascending == forward else "<"
    return f"{key} {op}= ? AND ({key} {op} ? OR id {op}{'=' if inclusive else ''} ?)"


def _and(where: str, clause: str) -> str:
    return where + (" AND " if where else " WHERE ") + clause


def _parts(order: Order) -> tuple[tuple[str | None, str], ...]:
    """(condition, key expression) of each part of the runs that `order` reads in key order:
    the whole table for "created"; for the other sorts their index's runs, and the queued runs
    it leaves out (whose key is the constant NOT_YET)."""
    if order.key == "created":
        return ((None, "created_at"),)
    return ((_INDEXED, SORT_KEYS[order.key]), (_QUEUED, NOT_YET))


def page(store: Store, query: RunQuery, now: float, *, limit: int, after: Cursor | None = None,
         at: Cursor | None = None, before: Cursor | None = None, last: bool = False,
         order: Order = NEWEST) -> list[RunRow]:
    """One page in `order` (newest first by default, like `runs.list()`).

    With no cursor: the first page. `after`: the runs just past it; `at`: from it (inclusive)
    on; `before`: the runs just ahead of it; `last`: the final page.
    """
    where, params = query.where(now)
    backward = before is not None or last
    cursor = before or after or at
    down = "ASC" if order.ascending != backward else "DESC"
    selects: list[str] = []
    args: list[Any] = []
    for condition, key in _parts(order):
        part = where if condition is None else _and(where, condition)
        args += params
        if cursor is not None:
            part = _and(part, _beyond(key, order, before is None, inclusive=at is not None
                                      and after is None and before is None))
            args += [cursor.key, cursor.key, cursor.id]
        selects.append(f"SELECT {', '.join(_PAGE_COLUMNS)}, {key} AS sort_key FROM runs{part}")
    # Each part is read in order from its index and the parts are merged (SQLite's MERGE
    # (UNION ALL)), so LIMIT stops the reading after one page.
    _, rows = store.select(f"{' UNION ALL '.join(selects)} "
                           f"ORDER BY sort_key {down}, id {down} LIMIT ?", (*args, limit))
    out = [_row(r) for r in rows]
    return out[::-1] if backward else out


def newer_than(store: Store, query: RunQuery, now: float, cursor: Cursor,
               order: Order = NEWEST, *, total: int | None = None) -> int:
    """How many matching runs come before `cursor` in `order` (its position): a count over a
    range of the key's index, which holds the key, so no row is read when nothing filters.

    With `total` (how many runs match, read by the caller), the runs from the cursor to the end
    are counted instead and taken from it: a caller near the end of the order (the last page)
    then counts a page's worth of index entries, not the whole history's."""
    where, params = query.where(now)
    counted = 0
    for condition, key in _parts(order):
        part = where if condition is None else _and(where, condition)
        part = _and(part, _beyond(key, order, forward=total is not None, inclusive=True)
                    if total is not None else _beyond(key, order, forward=False))
        _, rows = store.select(f"SELECT COUNT(*) FROM runs{part}",
                               (*params, cursor.key, cursor.key, cursor.id))
        counted += int(rows[0][0])
    return counted if total is None else max(0, total - counted)


def matches(store: Store, query: RunQuery, now: float, run_id: str) -> bool:
    """Whether `run_id` passes the filters (a primary-key probe)."""
    where, params = query.where(now)
    where += (" AND " if where else " WHERE ") + "id = ?"
    _, rows = store.select(f"SELECT 1 FROM runs{where}", (*params, run_id))
    return bool(rows)


def row(store: Store, run_id: str, order: Order = NEWEST) -> RunRow | None:
    """One run's row, with its key in `order` (so `Cursor.of` can anchor a page at it)."""
    _, rows = store.select(
        f"SELECT {', '.join(_PAGE_COLUMNS)}, {order.sql} FROM runs WHERE id = ?", (run_id,))
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


def recent_batches(store: Store, limit: int = 20, window: int = 5000) -> list[tuple[str, float]]:
    """The newest batches as (batch id, newest run's created_at), newest first.

    Only the newest `window` runs are looked at, through the created_at index: there is no
    index on batch_id, and a batch picker lists what was just run, not the whole history."""
    _, rows = store.select(
        "SELECT batch_id, MAX(created_at) AS t FROM (SELECT batch_id, created_at FROM runs "
        "ORDER BY created_at DESC LIMIT ?) WHERE batch_id IS NOT NULL "
        "GROUP BY batch_id ORDER BY t DESC LIMIT ?", (window, limit))
    return [(r[0], float(r[1])) for r in rows]


def schedule_choices(store: Store) -> list[tuple[str, str, str]]:
    """Every schedule as (id, task id, cron), for the schedule filter."""
    _, rows = store.select("SELECT id, task_id, cron FROM schedules ORDER BY task_id, id")
    return [(r[0], r[1], r[2]) for r in rows]


def last_payload(store: Store, task_id: str) -> Any:
    """The newest run's payload for `task_id` (decoded), or None when it never ran."""
    _, rows = store.select(
        "SELECT payload FROM runs WHERE task_id = ? ORDER BY created_at DESC LIMIT 1", (task_id,))
    return loads_or(rows[0][0]) if rows else None


def recent_payloads(store: Store, task_id: str, limit: int = 5) -> list[Any]:
    """The task's newest distinct payloads (decoded), newest first."""
    _, rows = store.select(
        "SELECT payload FROM runs WHERE task_id = ? ORDER BY created_at DESC LIMIT ?",
        (task_id, limit * 4))
    seen: set[str] = set()
    out: list[Any] = []
    for (text,) in rows:
        if text not in seen and len(out) < limit:
            seen.add(text)
            out.append(loads_or(text))
    return out


@dataclass(frozen=True, slots=True)
class LogLine:
    ts: float
    level: str
    message: str
    attributes: dict[str, Any] | None


def logs(store: Store, run_id: str, limit: int = 200) -> list[LogLine]:
    """The newest `limit` log lines of a run, oldest first; span lines belong to the trace."""
    _, rows = store.select(
        "SELECT ts, level, message, attributes FROM logs WHERE run_id = ? AND level != ? "
        "ORDER BY ts DESC LIMIT ?", (run_id, SPAN_LEVEL, limit))
    return [LogLine(ts, level, msg, loads_or(attrs)) for ts, level, msg, attrs in reversed(rows)]


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
