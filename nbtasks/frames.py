"""The history as pandas DataFrames: one SQL query each, turned into typed columns at once.

>>> df = nbtasks.runs.to_dataframe(since="7d")                       # doctest: +SKIP
>>> df.groupby("task_id", observed=True).status.apply(lambda s: (s == "FAILED").mean())
>>> att = nbtasks.runs.attempts_dataframe(task_id="etl")
>>> att.groupby("machine", observed=True).duration_ms.quantile([0.5, 0.95])

The only module that imports pandas, so `import nbtasks` stays light. History lives in the store,
not in the kernel: a frame is built on demand and holds only what its query returned.

Why it is shaped this way: with a million rows, nearly all the time goes into the database
driver making one Python object per value, so the query asks for as few objects as it can.
Low-cardinality text (task ids, statuses, machines, queues, error types, tags) comes back as
small integer codes computed by SQLite from a short list of the distinct values (fetched first,
from an index or one scan), which pandas turns into categoricals without hashing a million
strings; durations are computed from the timestamps afterwards. The rows are then transposed
into an object matrix in C and every column converted by one vectorised call. No Python code
runs per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._errors import ConfigurationError
from ._models import MACHINES
from ._payload import loads
from ._runs import run_filters
from ._status import RunStatus
from .stores._base import Store

#: Above this many distinct values a column is fetched as text and factorised by pandas: a CASE
#: with thousands of branches would cost SQLite more per row than hashing costs pandas.
_MAX_CODES = 64
_STATUSES = [s.value for s in RunStatus]
#: The same, most common first: SQLite tries a CASE's branches in order.
_BY_FREQUENCY = ("COMPLETED", "FAILED", "CANCELED", "EXECUTING",
                 *(s for s in _STATUSES if s not in ("COMPLETED", "FAILED", "CANCELED",
                                                      "EXECUTING")))


@dataclass(frozen=True, slots=True)
class Col:
    """A frame column: its SQL expression and how it becomes a typed array.

    kinds: str, int, bool, time (epoch seconds -> UTC), duration (milliseconds between the two
    time columns named in `sql`, computed rather than fetched), category (text factorised by pandas), code (a
    categorical whose values come from `values` or the `distinct` query), tags (a JSON list,
    decoded once per distinct value into tuples), json (decoded into objects).
    """

    name: str
    sql: str
    kind: str
    distinct: str | None = None
    values: tuple[str, ...] | None = None


RUN_COLUMNS = (
    Col("id", "r.id", "str"),
    Col("task_id", "r.task_id", "code", "SELECT DISTINCT task_id FROM runs"),
    Col("status", "r.status", "code", values=_BY_FREQUENCY),
    Col("created_at", "r.created_at", "time"),
    Col("started_at", "r.started_at", "time"),
    Col("finished_at", "r.finished_at", "time"),
    Col("duration_ms", "started_at finished_at", "duration"),
    Col("attempts", "r.attempt_count", "int"),
    Col("machine", "r.machine", "code", values=tuple(MACHINES)),
    Col("queue", "r.queue", "code", "SELECT DISTINCT queue FROM runs"),
    Col("concurrency_key", "r.concurrency_key", "str"),
    Col("tags", "r.tags", "tags", "SELECT DISTINCT tags FROM runs"),
    Col("error_type", "json_extract(r.error, '$.type')", "category"),
    Col("error_message", "json_extract(r.error, '$.message')", "str"),
    Col("is_test", "r.is_test", "bool"),
    Col("parent_id", "r.parent_id", "str"),
    Col("root_id", "r.root_id", "str"),
    Col("batch_id", "r.batch_id", "str"),
    Col("idempotency_key", "r.idempotency_key", "str"),
)
ATTEMPT_COLUMNS = (
    Col("run_id", "a.run_id", "str"),
    Col("task_id", "r.task_id", "code", "SELECT DISTINCT task_id FROM runs"),
    Col("attempt", "a.number", "int"),
    Col("status", "a.status", "code", values=_BY_FREQUENCY),
    Col("started_at", "a.started_at", "time"),
    Col("finished_at", "a.finished_at", "time"),
    Col("duration_ms", "started_at finished_at", "duration"),
    Col("machine", "a.machine", "code", values=tuple(MACHINES)),
    Col("queue", "a.queue", "code", "SELECT DISTINCT queue FROM runs"),  # an attempt's is its run's
    Col("concurrency_key", "r.concurrency_key", "str"),
    Col("error_type", "a.error_type", "code", "SELECT DISTINCT error_type FROM attempts"),
    Col("error_message", "a.error_message", "str"),
    Col("tags", "r.tags", "tags", "SELECT DISTINCT tags FROM runs"),
)
LOG_COLUMNS = (
    Col("ts", "ts", "time"),
    Col("level", "level", "category"),
    Col("message", "message", "str"),
    Col("attributes", "attributes", "json"),
)


def runs_frame(store: Store, now: float, *, limit: int | None = None,
               **filters: Any) -> pd.DataFrame:
    """One row per run, in trigger order; `limit` keeps the newest that many.

    Filters are those of `runs.list()`: task_id, status, tag, since, until, is_test, batch_id.
    """
    where, params = run_filters(now, alias="r", **filters)
    return _frame(store, RUN_COLUMNS, "runs r", where, params, "r.rowid", limit)


def attempts_frame(store: Store, now: float, *, status: Any = None, limit: int | None = None,
                   **filters: Any) -> pd.DataFrame:
    """One row per attempt, in trigger order then attempt number; `limit` keeps the newest.

    `status` selects attempts by their own status (COMPLETED, FAILED, CANCELED, EXECUTING); the
    other filters select runs (since/until by the run's creation time).
    """
    where, params = run_filters(now, alias="r", **filters)
    if status is not None:
        own, more = run_filters(now, status=status, alias="a")
        where = f"{where} AND {own.removeprefix(' WHERE ')}" if where else own
        params += more
    # Runs drive the loop (their filters, their rowid order); attempts follow by primary key.
    return _frame(store, ATTEMPT_COLUMNS, "runs r CROSS JOIN attempts a ON a.run_id = r.id",
                  where, params, "r.rowid, a.number", limit)


def logs(store: Store, run_id: str) -> pd.DataFrame:
    """The run's log lines in order: ts, level, message, attributes (dicts or None)."""
    return _frame(store, LOG_COLUMNS, "logs", " WHERE run_id = ?", [run_id], "ts, rowid", None)


# --------------------------------------------------------------------------- building


def _frame(store: Store, cols: tuple[Col, ...], source: str, where: str, params: list[Any],
           order: str, limit: int | None) -> pd.DataFrame:
    codes = {c.name: v for c in cols if c.kind in ("code", "tags")
             if (v := _codes_for(store, c)) is not None}
    plain = [c for c in cols if c.kind != "duration" and c.name not in codes]
    packs = _packs([c for c in cols if c.name in codes], codes)
    exprs = [c.sql for c in plain]
    case_params: list[Any] = []
    for pack in packs:
        expr, pack_params = _packed_sql(pack, codes)
        exprs.append(expr)
        case_params += pack_params
    sql = f"SELECT {', '.join(exprs)} FROM {source}{where} ORDER BY "
    tail: list[Any] = []
    if limit is None:
        sql += order
    else:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be a positive int or None, got {limit!r}")
        sql += ", ".join(f"{o} DESC" for o in order.split(", ")) + " LIMIT ?"
        tail = [limit]
    _, rows = store.select(sql, (*case_params, *params, *tail))
    if limit is not None:
        rows.reverse()  # the newest `limit`, handed back oldest first like an unlimited frame
    matrix = _matrix(rows, len(exprs))
    arrays: dict[str, Any] = {c.name: matrix[:, i] for i, c in enumerate(plain)}
    for i, pack in enumerate(packs, start=len(plain)):
        packed = matrix[:, i].astype("int64")
        for c in reversed(pack):
            packed, code = np.divmod(packed, len(codes[c.name]) + 1)
            arrays[c.name] = code - 1
    data: dict[str, Any] = {}
    for c in cols:
        if c.kind == "duration":
            start, end = (arrays[n].astype("float64") for n in c.sql.split())
            data[c.name] = (end - start) * 1000.0
        elif c.name in codes:
            data[c.name] = _decode(c, arrays[c.name], codes[c.name])
        else:
            data[c.name] = _column(c.kind, arrays[c.name])
    return pd.DataFrame(data, copy=False)


def _codes_for(store: Store, col: Col) -> list[str] | None:
    """The distinct values to code `col` by, or None to fetch it as text."""
    if col.values is not None:
        return list(col.values)
    assert col.distinct is not None
    _, rows = store.select(col.distinct)
    values = [r[0] for r in rows if r[0] is not None]
    return values if len(values) <= _MAX_CODES else None


def _packs(cols: list[Col], codes: dict[str, list[str]]) -> list[list[Col]]:
    """Group coded columns so each group's codes fit together in one 63-bit integer."""
    packs: list[list[Col]] = []
    room = 0
    for c in cols:
        base = len(codes[c.name]) + 1
        if not packs or room < base:
            packs.append([])
            room = 2**62
        packs[-1].append(c)
        room //= base
    return packs


def _packed_sql(pack: list[Col], codes: dict[str, list[str]]) -> tuple[str, list[str]]:
    """One integer per row holding every code of `pack` (mixed radix; NULL or unknown is 0).

    One value per row instead of one per column: the driver's per-value cost is what counts.
    """
    bases = [len(codes[c.name]) + 1 for c in pack]
    terms, params = [], []
    for i, c in enumerate(pack):
        values = codes[c.name]
        if not values:
            continue
        weight = int(np.prod(bases[i + 1:], dtype=object)) if i + 1 < len(bases) else 1
        whens = " ".join(f"WHEN ? THEN {k + 1}" for k in range(len(values)))
        terms.append(f"(CASE {c.sql} {whens} ELSE 0 END) * {weight}")
        params += values
    return (" + ".join(terms) or "0"), params


def _matrix(rows: list[tuple[Any, ...]], width: int) -> np.ndarray[Any, Any]:
    """Rows as a 2-D object array, transposed in C (pandas' helper, or numpy's slower path)."""
    if not rows:
        return np.empty((0, width), dtype=object)
    try:
        from pandas._libs import lib

        return lib.to_object_array_tuples(rows)  # type: ignore[attr-defined,no-any-return]
    except AttributeError:  # pragma: no cover - a pandas that moved its helper
        return np.array(rows, dtype=object)


def _column(kind: str, values: np.ndarray[Any, Any]) -> Any:
    """One fetched column as a typed array, in one vectorised call or two."""
    if kind == "time":
        return pd.to_datetime(values.astype("float64"), unit="s", utc=True)
    if kind == "int":
        return values.astype("int64")
    if kind == "bool":
        return values.astype("bool")
    if kind == "str":
        return pd.array(values, dtype="str")
    if kind in ("json", "tags"):  # tags here: too many distinct values to code in SQL
        return _decoded(values, tags=kind == "tags")
    return pd.Categorical(values)  # "category", or a code column with too many values


def _decode(col: Col, codes: np.ndarray[Any, Any], values: list[str]) -> Any:
    """A coded column (-1: NULL) as a categorical, or tags as tuples."""
    if col.kind == "tags":
        table = np.empty(len(values) + 1, dtype=object)
        for i, text in enumerate(values):  # one by one: numpy would unpack the tuples
            table[i] = tuple(loads(text))
        table[-1] = ()  # code -1 (no tags) picks the last slot
        return table[codes]
    if col.name == "status":  # every status in RunStatus order, so counts show the zeros
        remap = np.array([*(_STATUSES.index(v) for v in values), -1])
        return pd.Categorical.from_codes(remap[codes], categories=pd.Index(_STATUSES))
    cat = pd.Categorical.from_codes(codes, categories=pd.Index(values, dtype=object))
    return cat.remove_unused_categories()


def _decoded(values: np.ndarray[Any, Any], *, tags: bool) -> np.ndarray[Any, Any]:
    """Decode a JSON column once per distinct value; tags become tuples (shared, immutable)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = np.empty(len(uniques) + 1, dtype=object)
    for i, text in enumerate(uniques):
        table[i] = tuple(loads(text)) if tags else loads(text)
    table[-1] = () if tags else None  # code -1 (NULL) picks the last slot
    return table[codes]


# --------------------------------------------------------------------------- spans

def _span_col(name: str, path: str, kind: str) -> Col:
    return Col(name, f"json_extract(l.attributes, '$.{path}')", kind)


SPAN_COLUMNS = (
    Col("run_id", "l.run_id", "str"),
    Col("task_id", "r.task_id", "code", "SELECT DISTINCT task_id FROM runs"),
    _span_col("attempt", "attempt", "int"),
    _span_col("span_id", "span_id", "str"),
    _span_col("parent_id", "parent_id", "str"),
    Col("name", "l.message", "category"),
    _span_col("status", "status", "category"),
    _span_col("start", "start", "time"),
    _span_col("end", "end", "time"),
    Col("duration_ms", "start end", "duration"),
    _span_col("error_type", "error.type", "category"),
    _span_col("error_message", "error.message", "str"),
    Col("attributes", "json_extract(l.attributes, '$.attributes')", "json"),
)


def spans_frame(store: Store, now: float, *, run_id: str | None = None,
                **filters: Any) -> pd.DataFrame:
    """One row per `logger.trace` span, in start order: run_id, task_id, attempt, span_id,
    parent_id, name, status (running, ok, error, canceled), start, end, duration_ms, error_type,
    error_message, attributes (dicts or None).

    A span is stored as two log lines (opened, closed) with one span_id; the last one wins, so a
    span whose attempt died with it stays "running" with no end. Filters are those of
    `runs.list()`, selecting runs; `run_id` picks one run.
    """
    from ._spans import SPAN_LEVEL

    where, params = run_filters(now, alias="r", **filters)
    where = f"{where} AND l.level = ?" if where else " WHERE l.level = ?"
    params.append(SPAN_LEVEL)
    if run_id is not None:
        where += " AND l.run_id = ?"
        params.append(run_id)
    frame = _frame(store, SPAN_COLUMNS, "runs r CROSS JOIN logs l ON l.run_id = r.id", where,
                   params, "r.rowid, l.ts, l.rowid", None)
    frame = frame.drop_duplicates(subset=["run_id", "span_id"], keep="last")
    for name in ("start", "end"):  # one unit whether or not there are rows (pandas picks "us" for none)
        frame[name] = frame[name].astype("datetime64[ns, UTC]")
    return frame.sort_values("start", kind="stable").reset_index(drop=True)
