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

With the `arrow` extra installed (adbc-driver-sqlite, pyarrow) the query goes through ADBC
instead (see _arrow): plain columns, no Python object per value, text factorised by Arrow. There
the driver's own per-value work is most of the time and runs without the GIL, so a large history
is read as disjoint rowid ranges of the runs, one connection and thread per core, and the parts
joined column by column (see _rowid_ranges).
Both paths end in the same converters, so the frame is the same either way: categories sorted
(statuses in RunStatus order, all of them; machines by size), times datetime64[ns, UTC].
`columns=` reads and decodes only the columns asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import _arrow
from ._errors import ConfigurationError
from ._models import MACHINES
from ._payload import loads_or, tags_of, valid_json
from ._runs import run_filters
from ._status import RunStatus
from .stores._base import Store
from .stores.sqlite import SQLiteStore

#: Above this many distinct values a column is fetched as text and factorised by pandas: a CASE
#: with thousands of branches would cost SQLite more per row than hashing costs pandas.
_MAX_CODES = 64
#: A large history is read in parts on up to this many threads, each of at least this many
#: runs' rowids: below that, a thread and a connection cost more than they save.
_MAX_PARTS = 8
_PART_ROWS = 25_000
_STATUSES = [s.value for s in RunStatus]
#: Presets from small to large; a machine unknown to this version sorts last.
_MACHINE_RANK = {name: i for i, name in enumerate(MACHINES)}
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
    Col("error_type", f"json_extract({valid_json('r.error')}, '$.type')", "category"),
    Col("error_message", f"json_extract({valid_json('r.error')}, '$.message')", "str"),
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
               columns: list[str] | None = None, **filters: Any) -> pd.DataFrame:
    """One row per run, in trigger order; `limit` keeps the newest that many.

    Filters are those of `runs.list()`: task_id, status, tag, since, until, is_test, batch_id.
    `columns` keeps only those (in that order), and only they are read and decoded: leaving
    out tags and error_* skips their JSON, the costliest columns of a large history.
    """
    where, params = run_filters(now, alias="r", **filters)
    return _frame(store, RUN_COLUMNS, "runs r", where, params, "r.rowid", limit, columns)


def attempts_frame(store: Store, now: float, *, status: Any = None, limit: int | None = None,
                   columns: list[str] | None = None, **filters: Any) -> pd.DataFrame:
    """One row per attempt, in trigger order then attempt number; `limit` keeps the newest.

    `status` selects attempts by their own status (COMPLETED, FAILED, CANCELED, EXECUTING); the
    other filters select runs (since/until by the run's creation time). `columns` as for
    runs_frame.
    """
    where, params = run_filters(now, alias="r", **filters)
    if status is not None:
        own, more = run_filters(now, status=status, alias="a")
        where = f"{where} AND {own.removeprefix(' WHERE ')}" if where else own
        params += more
    # Runs drive the loop (their filters, their rowid order); attempts follow by primary key.
    return _frame(store, ATTEMPT_COLUMNS, "runs r CROSS JOIN attempts a ON a.run_id = r.id",
                  where, params, "r.rowid, a.number", limit, columns)


def attempts_arrow(store: Store, now: float, **options: Any) -> Any:
    """attempts_frame() as a pyarrow Table, for polars, DuckDB or Arrow users (the arrow extra).

    The same columns: categoricals as dictionaries, times as timestamp[ns, UTC], tags as lists.
    """
    return _arrow.from_frame(attempts_frame(store, now, **options))


def logs(store: Store, run_id: str) -> pd.DataFrame:
    """The run's log lines in order: ts, level, message, attributes (dicts or None)."""
    return _frame(store, LOG_COLUMNS, "logs", " WHERE run_id = ?", [run_id], "ts, rowid", None)


def _chosen(cols: tuple[Col, ...], names: list[str] | None) -> tuple[Col, ...]:
    """The columns asked for, in that order (all when None); a duration brings its two times
    along to be computed from, dropped again by _assemble unless asked for too."""
    if names is None:
        return cols
    by_name = {c.name: c for c in cols}
    if isinstance(names, str) or not all(isinstance(n, str) and n in by_name for n in names) \
            or len(set(names)) != len(names) or not names:
        raise ConfigurationError(f"columns must be a list of distinct names from "
                                 f"{list(by_name)}, got {names!r}")
    return tuple(by_name[n] for n in names)


# --------------------------------------------------------------------------- building


def _frame(store: Store, cols: tuple[Col, ...], source: str, where: str, params: list[Any],
           order: str, limit: int | None, columns: list[str] | None = None) -> pd.DataFrame:
    if limit is None:
        order_sql, tail = order, []
    else:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be a positive int or None, got {limit!r}")
        order_sql, tail = ", ".join(f"{o} DESC" for o in order.split(", ")) + " LIMIT ?", [limit]
    every = {c.name: c for c in cols}
    cols = _chosen(cols, columns)
    read = [c for c in cols if c.kind != "duration"]
    for c in cols:  # the times a duration is computed from, unless already read
        if c.kind == "duration":
            read += [every[n] for n in c.sql.split() if every[n] not in read]
    if _arrow.AVAILABLE and isinstance(store, SQLiteStore) and not store.memory:
        try:
            return _assemble(cols, *_arrow_frame(store, read, source, where, params, order_sql,
                                                 tail))
        except _arrow.Mismatch:
            pass  # a column the driver typed from its first rows only: the stdlib path copes
    return _assemble(cols, *_sqlite_frame(store, read, source, where, [*params, *tail],
                                          order_sql, reverse=limit is not None))


Columns = tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]


def _arrow_frame(store: SQLiteStore, fetched: list[Col], source: str, where: str,
                 params: list[Any], order: str, tail: list[Any]) -> Columns:
    """The Arrow path: plain columns in SQL, text factorised and typed in C (see _arrow)."""
    store.settle()  # the reader is another process: fold what a cell's trigger() just committed
    select = f"SELECT {', '.join(c.sql for c in fetched)} FROM {source}"
    if tail:  # the newest `limit`: one query, handed back oldest first like an unlimited frame
        part = _arrow.fetch(store.path, [(f"{select}{where} ORDER BY {order}",
                                          [*params, *tail])], busy_timeout=store.busy_timeout)[0]
        parts = [part.take(np.arange(part.num_rows - 1, -1, -1))]
    else:
        within = f"{where} AND" if where else " WHERE"  # the filters are ANDed terms
        parts = _arrow.fetch(store.path, [
            (f"{select}{within} r.rowid BETWEEN ? AND ? ORDER BY {order}", [*params, lo, hi])
            for lo, hi in _rowid_ranges(store, source)
        ] or [(f"{select}{where} ORDER BY {order}", params)], busy_timeout=store.busy_timeout)
    data: dict[str, Any] = {}
    times: dict[str, np.ndarray[Any, Any]] = {}
    for i, c in enumerate(fetched):
        if c.kind == "str":
            data[c.name] = _arrow.strings(parts, i)
        elif c.kind == "time":
            times[c.name] = _arrow.floats(parts, i)
            data[c.name] = _column("time", times[c.name])
        elif c.kind in ("int", "bool"):
            data[c.name] = _column(c.kind, _arrow.ints(parts, i))
        else:
            codes, values = _arrow.factorize(parts, i)
            data[c.name] = _coded(c, codes, values)
    return data, times


def _rowid_ranges(store: Store, source: str) -> list[tuple[int, int]]:
    """Disjoint rowid ranges of `runs r` to read in parallel, one per core, in order; none
    (read in one query) when the history is small or the query is not over runs.

    The ranges split the table's rowids evenly, not the rows a filter keeps: a filter that
    keeps a narrow band (since="1h") gives uneven parts, never a wrong frame. Each part is its
    own snapshot; a run is in exactly one part, and runs added after the bounds were read in
    none, as if the frame had been read a moment earlier.
    """
    cores = min(os.cpu_count() or 1, _MAX_PARTS)
    if source.split()[:2] != ["runs", "r"] or cores < 2:
        return []
    # Two subqueries: each is one B-tree descent, where min() and max() together would scan.
    _, rows = store.select("SELECT (SELECT min(rowid) FROM runs), (SELECT max(rowid) FROM runs)")
    low, high = rows[0]
    if low is None or high - low + 1 < 2 * _PART_ROWS:
        return []
    parts = min(cores, (high - low + 1) // _PART_ROWS)
    edges = [low + (high - low + 1) * k // parts for k in range(parts + 1)]
    return [(edges[k], edges[k + 1] - 1) for k in range(parts)]


def _sqlite_frame(store: Store, cols: list[Col], source: str, where: str,
                  params: list[Any], order: str, *, reverse: bool) -> Columns:
    """The stdlib path: as few Python objects per row as SQL can manage (see the docstring)."""
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
    sql = f"SELECT {', '.join(exprs)} FROM {source}{where} ORDER BY {order}"
    _, rows = store.select(sql, (*case_params, *params))
    if reverse:
        rows.reverse()
    matrix = _matrix(rows, len(exprs))
    data: dict[str, Any] = {}
    times: dict[str, np.ndarray[Any, Any]] = {}
    for i, c in enumerate(plain):
        values = matrix[:, i]
        if c.kind == "time":
            times[c.name] = values.astype("float64")
            data[c.name] = _column("time", times[c.name])
        elif c.kind != "str" and c.kind not in ("int", "bool"):
            # category and json, or a code/tags column with too many values to code in SQL
            found, uniques = pd.factorize(values, use_na_sentinel=True)
            data[c.name] = _coded(c, found, list(uniques))
        else:
            data[c.name] = _column(c.kind, values)
    for i, pack in enumerate(packs, start=len(plain)):
        packed = matrix[:, i].astype("int64")
        for c in reversed(pack):
            packed, code = np.divmod(packed, len(codes[c.name]) + 1)
            data[c.name] = _coded(c, code - 1, codes[c.name])
    return data, times


def _assemble(cols: tuple[Col, ...], data: dict[str, Any],
              times: dict[str, np.ndarray[Any, Any]]) -> pd.DataFrame:
    """The frame in the columns' order; durations computed from the two fetched times."""
    out: dict[str, Any] = {}
    for c in cols:
        if c.kind == "duration":
            start, end = (times[n] for n in c.sql.split())
            out[c.name] = (end - start) * 1000.0
        else:
            out[c.name] = data[c.name]
    return pd.DataFrame(out, copy=False)


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
    """A fetched scalar column as a typed array, in one vectorised call."""
    if kind == "time":
        return _utc(values.astype("float64"))
    if kind == "int":
        return values.astype("int64")
    if kind == "bool":
        return values.astype("bool")
    return pd.array(values, dtype="str")


def _utc(seconds: np.ndarray[Any, Any]) -> pd.DatetimeIndex:
    """Epoch seconds (NaN: NaT) as datetime64[ns, UTC], to the nanosecond what
    `pd.to_datetime(seconds, unit="s", utc=True)` gives, in less than half its time.

    pandas splits each value into whole seconds and a fraction rounded to 9 places, so a
    float's noise below the nanosecond never carries into the result; this does the same
    arithmetic as a few whole-array operations instead of a per-value loop and its checks.
    """
    nan = np.isnan(seconds)
    whole = np.where(nan, 0.0, seconds)
    if len(whole) and np.abs(whole).max() >= 9e9:  # past 2255: pandas' range error, not ours
        return pd.to_datetime(seconds, unit="s", utc=True).as_unit("ns")
    base = whole.astype("int64")
    ns = base * 1_000_000_000 + (np.round(whole - base, 9) * 1e9).astype("int64")
    ns[nan] = np.iinfo("int64").min  # NaT
    return pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC")


def _coded(col: Col, codes: np.ndarray[Any, Any], values: list[Any]) -> Any:
    """A column given as codes into `values` (-1: NULL): a categorical, tags or decoded JSON.

    Both paths end here, so a frame is the same whichever built it. Categories are sorted
    (statuses in RunStatus order, every one of them so counts show the zeros; machines by size).
    """
    if col.kind in ("tags", "json"):
        table = np.empty(len(values) + 1, dtype=object)
        for i, text in enumerate(values):  # one by one: numpy would unpack the tuples
            # An odd row (not JSON, too deep, tags not a list) reads as no value, as
            # `runs.list()` shows it, instead of failing the whole frame.
            table[i] = tags_of(text) if col.kind == "tags" else loads_or(text)
        table[-1] = () if col.kind == "tags" else None  # code -1 (NULL) picks the last slot
        return table[codes]
    if col.name == "status" and col.kind == "code":  # a run or attempt status
        categories = _STATUSES
    else:
        counts = np.bincount(codes + 1, minlength=len(values) + 1)[1:]
        used = [v for v, n in zip(values, counts, strict=True) if n]
        categories = sorted(used, key=lambda m: (_MACHINE_RANK.get(m, len(MACHINES)), m)) \
            if col.name == "machine" else sorted(used)
    position = {v: i for i, v in enumerate(categories)}
    remap = np.array([*(position.get(v, -1) for v in values), -1], dtype="int64")
    return pd.Categorical.from_codes(remap[codes], categories=pd.Index(categories, dtype="str"),
                                     validate=False)


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
    # A span line whose attributes SQLite can't read (an odd row) is left out, not the frame.
    spans = "l.level = ? AND json_valid(l.attributes)"
    where = f"{where} AND {spans}" if where else f" WHERE {spans}"
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
