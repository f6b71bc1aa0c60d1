"""`nbtasks.runs`: retrieve, list, cancel, replay, reschedule; DataFrames through `frames`.

>>> nbtasks.runs.list(task_id="hello-world", status="FAILED", limit=20)     # doctest: +SKIP
>>> nbtasks.runs.cancel(handle.id)
>>> nbtasks.runs.to_dataframe(since="1d")
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ._clock import to_datetime
from ._durations import Duration, parse_delay, parse_duration
from ._errors import ConfigurationError, EngineError, RunNotFoundError
from ._events import RunEvent
from ._models import Run
from ._payload import check_text, dumps, loads, valid_json
from ._runstate import ATTEMPT_COLUMNS, RUN_COLUMNS, run_model
from ._status import FINAL, RunStatus

if TYPE_CHECKING:
    import pandas as pd

    from ._engine import Engine
    from ._handles import RunHandle

_UNSET: Any = object()


class RunList(list[Run]):
    """`runs.list()`'s answer: a plain list of Run snapshots that renders as a table."""

    def _repr_html_(self) -> str:
        from .notebook.display import runs_table_html

        return runs_table_html(self)


#: SQLite's integer range: LIMIT and OFFSET past it raise OverflowError in the driver.
_SQL_INT_MAX = 2**63 - 1


def _strings(value: Any, where: str) -> list[str]:
    """A str or a list/tuple of str (a filter), or ConfigurationError naming the filter."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(
            isinstance(v, str) for v in items):
        raise ConfigurationError(
            f"{where}: expected a string or a non-empty list of strings, got {value!r}"[:200])
    for v in items:  # SQLite can't even bind a str with a lone surrogate
        check_text(v, where=where, allow_empty=True)
    return list(items)


def _count(value: Any, where: str, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= _SQL_INT_MAX:
        raise ConfigurationError(
            f"{where} must be an int from {lowest} to 2**63-1, got {value!r}"[:200])
    return value


def _run_id(run_id: Any) -> str:
    return check_text(run_id, where="run id")


def _statuses(status: Any) -> list[str]:
    items = [status] if isinstance(status, str | RunStatus) else status
    if not isinstance(items, list | tuple | set | frozenset):
        raise ConfigurationError(f"status: expected a status or a list of them, got {status!r}")
    out = []
    for s in items:
        try:
            out.append(RunStatus(str(s).upper()).value)
        except ValueError:
            raise ConfigurationError(
                f"status: {s!r} is not a run status ({', '.join(RunStatus)})") from None
    return out


def _when(value: datetime | Duration | None, now: float, where: str) -> float | None:
    """A datetime, or a duration meaning "that long ago" ("1d")."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{where}: pass an aware datetime, got {value!r}")
        return value.timestamp()
    return now - parse_duration(value, where=where)


def run_filters(
    now: float, *, task_id: str | list[str] | None = None, status: Any = None,
    tag: str | list[str] | None = None, since: Any = None, until: Any = None,
    is_test: bool | None = None, batch_id: str | None = None, alias: str = "runs",
) -> tuple[str, list[Any]]:
    """A WHERE clause (possibly empty) and its parameters; shared by lists and DataFrames.

    Every filter is checked here, so a wrong type raises ConfigurationError naming the filter
    instead of a TypeError from deep in the driver.
    """
    where: list[str] = []
    params: list[Any] = []
    if task_id is not None:
        ids = _strings(task_id, "task_id")
        where.append(f"{alias}.task_id IN ({', '.join('?' * len(ids))})")
        params += ids
    if status is not None:
        sts = _statuses(status)
        where.append(f"{alias}.status IN ({', '.join('?' * len(sts))})")
        params += sts
    if tag is not None:
        tags = _strings(tag, "tag")
        where.append(f"EXISTS (SELECT 1 FROM json_each({valid_json(alias + '.tags')}) "
                     "WHERE value IN "
                     f"({', '.join('?' * len(tags))}))")
        params += tags
    if (t := _when(since, now, "since")) is not None:
        where.append(f"{alias}.created_at >= ?")
        params.append(t)
    if (t := _when(until, now, "until")) is not None:
        where.append(f"{alias}.created_at < ?")
        params.append(t)
    if is_test is not None:
        if not isinstance(is_test, bool):
            raise ConfigurationError(f"is_test: expected True, False or None, got {is_test!r}")
        where.append(f"{alias}.is_test = ?")
        params.append(int(is_test))
    if batch_id is not None:
        _strings(batch_id, "batch_id")
        where.append(f"{alias}.batch_id = ?")
        params.append(batch_id)
    return (" WHERE " + " AND ".join(where)) if where else "", params


_FILTERS = {"task_id", "status", "tag", "since", "until", "is_test", "batch_id"}

#: What decoding one odd column can raise; RecursionError: JSON nested deeper than the decoder
#: goes (written by hand, or by an older version on a Python whose encoder goes deeper).
_BAD_VALUE = (TypeError, ValueError, OverflowError, OSError, RecursionError)


def _known_filters(filters: dict[str, Any], where: str, valid: set[str] = _FILTERS) -> None:
    """ConfigurationError naming any filter not in `valid` (run_filters checks the values)."""
    unknown = set(filters) - valid
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown filter(s) {sorted(unknown)}; valid: {sorted(valid)}")


def _frame_filters(filters: dict[str, Any], where: str) -> None:
    """The DataFrame methods' filters: run_filters checks the values, this the names and limit.
    `columns` (which columns to build) is checked by nbtasks.frames itself."""
    _known_filters(filters, where, _FILTERS | {"limit", "columns"})
    if filters.get("limit") is not None:
        _count(filters["limit"], "limit", 1)


def _decoded(row: dict[str, Any], attempts: builtins.list[dict[str, Any]] | None = None) -> Run:
    """The row as a Run; a row that can't be decoded still comes back, showing the problem.

    A time out of datetime's range (written by an older version that took any delay) or JSON
    that doesn't parse must not make `runs.list()` fail for every run: the bad fields become
    None (or empty) and `error` says "undecodable row: ..." with each field and its reason. A
    created_at that can't be read shows as the epoch, and a status this version doesn't know
    (written by a newer one) as SYSTEM_FAILURE; both are named in that error.
    """
    try:
        return run_model(row, attempts)
    except (*_BAD_VALUE, ValidationError):
        pass
    problems: builtins.list[str] = []

    def field(name: str, decode: Callable[[Any], Any]) -> Any:
        """`decode(row[name])`, or None with the reason noted."""
        try:
            return decode(row[name])
        except (*_BAD_VALUE, ValidationError) as exc:
            problems.append(f"{name}={str(row[name])[:40]!r}: {exc}")
            return None

    fixed = dict(row)
    for name in ("started_at", "finished_at", "updated_at", "delay_until"):
        fixed[name] = None if field(name, to_datetime) is None else row[name]
    fixed["created_at"] = 0.0 if field("created_at", to_datetime) is None else row["created_at"]
    for name in ("payload", "output", "error", "tags", "metadata"):
        fixed[name] = None if field(name, loads) is None else row[name]
    for name, wanted in (("tags", builtins.list), ("metadata", dict), ("error", dict)):
        if fixed[name] is not None and not isinstance(loads(fixed[name]), wanted):
            problems.append(f"{name}: not a {wanted.__name__}")
            fixed[name] = None
    if field("status", RunStatus) is None:
        fixed["status"] = RunStatus.SYSTEM_FAILURE.value
    decoded_attempts = []
    for a in attempts or []:  # keep the attempts that read; name the others
        try:
            decoded_attempts.append(run_model({**fixed, "error": None}, [a]).attempts[0])
        except (*_BAD_VALUE, ValidationError) as exc:
            problems.append(f"attempt {a.get('number')}: {exc}")
    if not problems:
        problems.append("a field has a value of the wrong type")
    error = {"type": "UndecodableRow", "message": "undecodable row: " + "; ".join(problems)}
    fixed["error"] = dumps(error)
    try:
        run = run_model(fixed, None)
    except (*_BAD_VALUE, ValidationError):  # a column of the wrong type: keep the bare facts
        return Run(id=str(row["id"]), task_id=str(row["task_id"]),
                   status=RunStatus(fixed["status"]), created_at=datetime.fromtimestamp(0, UTC),
                   error=error)
    return run.model_copy(update={"attempts": decoded_attempts})


class RunsAPI:
    """Bound to one engine (`eng.runs`), or to the default one (`nbtasks.runs`)."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine()

    # ------------------------------------------------------------------ reading

    def _fresh(self) -> None:
        """Let pending writes land so a read sees the latest state (a no-op on the loop)."""
        eng = self.engine
        if not eng.runtime.in_loop() and not eng.closed:
            eng.runtime.call(eng.writer.barrier)

    def row(self, run_id: str) -> dict[str, Any] | None:
        cols, rows = self.engine.store.select(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id = ?", (_run_id(run_id),))
        return dict(zip(cols, rows[0], strict=True)) if rows else None

    def retrieve(self, run_id: str) -> Run:
        """The run's current snapshot, with its attempts."""
        self._fresh()
        row = self.row(run_id)
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        cols, rows = self.engine.store.select(
            f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE run_id = ? ORDER BY number",
            (run_id,))
        return _decoded(row, [dict(zip(cols, r, strict=True)) for r in rows])

    def list(
        self, *, task_id: str | list[str] | None = None, status: Any = None,
        tag: str | list[str] | None = None, since: Any = None, until: Any = None,
        is_test: bool | None = None, batch_id: str | None = None, limit: int = 100,
        offset: int = 0,
    ) -> RunList:
        """Newest first. Filters combine with AND. A row that can't be decoded is listed as
        such (see `_decoded`), never failing the whole list."""
        _count(limit, "limit", 1)
        _count(offset, "offset", 0)
        self._fresh()
        where, params = run_filters(self.engine.clock.now(), task_id=task_id, status=status,
                                    tag=tag, since=since, until=until, is_test=is_test,
                                    batch_id=batch_id)
        cols, rows = self.engine.store.select(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs{where} ORDER BY created_at DESC, seq DESC "
            "LIMIT ? OFFSET ?", (*params, limit, offset))
        return RunList(_decoded(dict(zip(cols, r, strict=True))) for r in rows)

    def count(self, **filters: Any) -> int:
        _known_filters(filters, "runs.count")
        self._fresh()
        where, params = run_filters(self.engine.clock.now(), **filters)
        return int(self.engine.store.select(f"SELECT COUNT(*) FROM runs{where}",
                                            tuple(params))[1][0][0])

    def logs(self, run_id: str) -> pd.DataFrame:
        from . import frames

        _run_id(run_id)
        self._fresh()
        return frames.logs(self.engine.store, run_id)

    def to_dataframe(self, **filters: Any) -> pd.DataFrame:
        """One row per run, built by one SQL query (see nbtasks.frames)."""
        from . import frames

        _frame_filters(filters, "runs.to_dataframe")
        self._fresh()
        return frames.runs_frame(self.engine.store, self.engine.clock.now(), **filters)

    def attempts_dataframe(self, **filters: Any) -> pd.DataFrame:
        """One row per attempt (see nbtasks.frames)."""
        from . import frames

        _frame_filters(filters, "runs.attempts_dataframe")
        self._fresh()
        return frames.attempts_frame(self.engine.store, self.engine.clock.now(), **filters)

    def attempts_arrow(self, **filters: Any) -> Any:
        """attempts_dataframe() as a pyarrow Table (the arrow extra; see nbtasks.frames)."""
        from . import frames

        _frame_filters(filters, "runs.attempts_arrow")
        self._fresh()
        return frames.attempts_arrow(self.engine.store, self.engine.clock.now(), **filters)

    def spans_dataframe(self, **filters: Any) -> pd.DataFrame:
        """One row per `logger.trace` span (see nbtasks.frames.spans_frame)."""
        from . import frames

        self._fresh()
        return frames.spans_frame(self.engine.store, self.engine.clock.now(), **filters)

    # ------------------------------------------------------------------ changing

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.engine.on_loop(fn, *args)

    def cancel(self, run_id: str) -> bool:
        """Cancel a non-final run (and its running children). False: it was already final."""
        eng = self.engine
        _run_id(run_id)

        def _cancel() -> bool:
            run = eng.scheduler.active.get(run_id)
            if run is None:
                row = self.row(run_id)
                if row is None:
                    raise RunNotFoundError(f"no run with id {run_id!r}")
                if RunStatus(row["status"]) in FINAL:
                    return False
                raise EngineError(f"run {run_id} is owned by another kernel; cancel it there")
            return eng.scheduler.stop(run, RunStatus.CANCELED, "cancel")

        return bool(self._on_loop(_cancel))

    def replay(self, run_id: str, payload: Any = _UNSET, **options: Any) -> RunHandle[Any]:
        """A new run of the same task with the same payload (or `payload`), tags, queue and key."""
        row = self.row(run_id)
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        eng = self.engine
        defn = eng.registry.require(row["task_id"])
        from ._tasks import Task

        task: Task[Any, Any] = Task(defn, eng.registry)
        opts: dict[str, Any] = {}
        if row["tags"]:
            opts["tags"] = loads(row["tags"])
        if row["concurrency_key"]:
            opts["concurrency_key"] = row["concurrency_key"]
        if row["queue"] and row["queue"] != defn.queue_name:
            opts["queue"] = row["queue"]
        opts.update(options)
        body = task.encode(loads(row["payload"]) if payload is _UNSET else payload)
        return eng.trigger_encoded(defn, body, opts, is_test=bool(row["is_test"]),
                                   replayed_from=run_id)

    def reschedule(self, run_id: str, delay: Any) -> Run:
        """Move a DELAYED run's start (as Trigger.dev's reschedule). A date in the past is an
        invalid delay, as in Trigger.dev; so is anything `trigger(delay=...)` refuses."""
        eng = self.engine
        _run_id(run_id)
        at = parse_delay(delay, eng.clock.now(), where="delay", allow_past=False)

        def _go() -> None:
            run = eng.scheduler.active.get(run_id)
            if run is None or run.status is not RunStatus.DELAYED:
                raise ConfigurationError("Cannot reschedule a run that is not delayed")
            eng.scheduler.reschedule(run, at)

        self._on_loop(_go)
        return self.retrieve(run_id)

    async def subscribe(self, *, run_id: str | None = None,
                        task_id: str | None = None) -> AsyncIterator[RunEvent]:
        """Async iterator of RunEvents, optionally filtered; yields until you stop iterating."""
        eng = self.engine
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RunEvent] = asyncio.Queue()

        def _push(event: RunEvent) -> None:
            if (run_id is None or event.run_id == run_id) and (
                    task_id is None or event.task_id == task_id):
                loop.call_soon_threadsafe(queue.put_nowait, event)

        unsubscribe = eng.subscribe(_push)
        try:
            while True:
                yield await queue.get()
        finally:
            unsubscribe()

    def prune(self, older_than: Duration = "30d") -> int:
        """Delete final runs created before `older_than` ago, with their attempts, logs and
        waits, and wait tokens settled before then. Returns how many runs went.

        The freed pages are reused by new history, so the file stops growing.
        """
        from .stores.sqlite import _FINAL_SQL

        eng = self.engine
        cutoff = eng.clock.now() - parse_duration(older_than, where="older_than")
        self._fresh()
        _, rows = eng.store.select(
            f"SELECT COUNT(*) FROM runs WHERE created_at < ? AND status IN {_FINAL_SQL}",
            (cutoff,))
        sub = f"SELECT id FROM runs WHERE created_at < ? AND status IN {_FINAL_SQL}"
        for sql in (f"DELETE FROM attempts WHERE run_id IN ({sub})",
                    f"DELETE FROM logs WHERE run_id IN ({sub})",
                    f"DELETE FROM waitpoints WHERE kind = 'wait' AND run_id IN ({sub})",
                    "DELETE FROM waitpoints WHERE kind = 'token' AND status != 'WAITING' "
                    "AND completed_at < ?",
                    f"DELETE FROM runs WHERE id IN ({sub})"):
            eng.on_loop(eng.writer.statement, sql, (cutoff,))
        self._fresh()
        return int(rows[0][0])

    def interrupted(self) -> builtins.list[str]:
        """Ids of runs held after a restart with `configure(resume=False)`."""
        return [r.id for r in self.engine.scheduler.held]

    def resume_interrupted(self) -> int:
        from ._recovery import schedule_recovered

        eng = self.engine

        def _go() -> int:
            held, eng.scheduler.held = eng.scheduler.held, []
            for run in held:
                schedule_recovered(eng.scheduler, run)
            return len(held)

        return int(self._on_loop(_go))

    def cancel_interrupted(self) -> int:
        eng = self.engine

        def _go() -> int:
            held, eng.scheduler.held = eng.scheduler.held, []
            return sum(eng.scheduler.stop(r, RunStatus.CANCELED, "cancel") for r in held)

        return int(self._on_loop(_go))
