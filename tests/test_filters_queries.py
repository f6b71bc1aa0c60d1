"""The runs table's queries on a real SQLite file: sorted keyset pages, the custom time range,
the schedule and batch filters, and the index each one is served by.

Rows are written through the store's own write path with chosen times (ties on purpose), so the
expected orders are computed here from the same numbers, not read back from the code under test.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from nbtasks import ConfigurationError, Engine
from nbtasks._runstate import RunState, new_id
from nbtasks._status import FINAL, RunStatus
from nbtasks.notebook import queries
from nbtasks.notebook.queries import Cursor, Order, RunQuery
from nbtasks.notebook.runs_table import parse_when
from nbtasks.stores import SQLiteStore, WriteBatch
from nbtasks.stores.sqlite import SORTED_RUNS
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000.0
ORDERS = [Order(k, up) for k in queries.SORTS for up in (False, True)]


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(db_path))
    s.open()
    try:
        yield s
    finally:
        s.close()


def _run(created: float, status: RunStatus, started: float | None = None,
         took: float | None = None, batch: str | None = None) -> RunState:
    run = RunState(new_id("run_"), "etl", json.dumps({"at": created}), created)
    run.status = status
    run.started_at = started
    if took is not None and started is not None:
        run.finished_at = run.updated_at = started + took
    run.attempt_count = 1 if started is not None else 0
    run.queue, run.machine, run.owner, run.batch_id = "task/etl", "kernel", "eng_test", batch
    return run


def write(store: SQLiteStore, runs: list[RunState]) -> None:
    store.write(WriteBatch(runs=[r.row() for r in runs]))


def history(rng: random.Random, n: int, t0: float) -> list[RunState]:
    """`n` runs with many equal keys (created, started and duration come from few values), and
    some still queued or executing, or ended unstarted (they have no start or no final
    duration)."""
    out = []
    for i in range(n):
        created = t0 + (i // 3)  # three runs per second: ties on created_at
        kind = rng.random()
        if kind < 0.1:
            out.append(_run(created, RunStatus.QUEUED))
        elif kind < 0.2:
            out.append(_run(created, RunStatus.EXECUTING, started=created + 1))
        elif kind < 0.25:  # ended before it started: never gets a start or a duration
            out.append(_run(created, rng.choice([RunStatus.CANCELED, RunStatus.EXPIRED])))
        else:
            out.append(_run(created, rng.choice([RunStatus.COMPLETED, RunStatus.FAILED]),
                            started=created + rng.choice([0.5, 1.0, 2.0]),
                            took=rng.choice([0.25, 1.0, 3.0, 3.0])))
    return out


def expected_key(run: RunState, order: Order) -> float:
    """The sort key, computed here: a run without one yet sorts as if it were infinite."""
    far = 1e300
    if order.key == "created":
        return run.created_at
    if order.key == "started":
        return far if run.started_at is None else run.started_at
    if run.started_at is None or run.status not in FINAL or run.finished_at is None:
        return far
    return max(0.0, run.finished_at - run.started_at)


def expected(runs: list[RunState], order: Order) -> list[str]:
    ranked = sorted(runs, key=lambda r: (expected_key(r, order), r.id),
                    reverse=not order.ascending)
    return [r.id for r in ranked]


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: f"{o.key}-{'asc' if o.ascending else 'desc'}")
def test_sorted_pages_have_no_gaps_or_duplicates_while_runs_arrive(
        store: SQLiteStore, order: Order) -> None:
    rng = random.Random(7)
    original = history(rng, 60, NOW - 1000)
    write(store, original)
    want = expected(original, order)
    q = RunQuery()
    seen: list[str] = []
    rows = queries.page(store, q, NOW, limit=7, order=order)
    arrived: list[RunState] = []
    for step in itertools.count():
        assert step < 50, "paging never reached the end"
        seen += [r.id for r in rows]
        if step < 6:  # new runs arrive between page loads: later, some started, some finished
            arrived += history(rng, 4, NOW + step * 10)
            write(store, arrived[-4:])
        rows = queries.page(store, q, NOW, limit=7, after=Cursor.of(rows[-1]), order=order)
        if not rows:
            break
    assert len(seen) == len(set(seen)), "a run was shown twice"
    originals = set(want)
    assert [i for i in seen if i in originals] == want  # every original run, once, in order
    # and whatever arrived was shown only where the order puts it: past the cursor
    keys = {r.id: (expected_key(r, order), r.id) for r in [*original, *arrived]}
    ranks = [keys[i] for i in seen]
    assert ranks == sorted(ranks, reverse=not order.ascending)
    if order == Order("created"):  # newest first: arrivals land above the cursor, never below
        assert seen == want


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: f"{o.key}-{'asc' if o.ascending else 'desc'}")
def test_backward_pages_last_page_and_position_agree_with_the_order(
        store: SQLiteStore, order: Order) -> None:
    runs = history(random.Random(3), 40, NOW - 500)
    write(store, runs)
    want = expected(runs, order)
    q = RunQuery()
    last = queries.page(store, q, NOW, limit=6, last=True, order=order)
    assert [r.id for r in last] == want[-6:]
    anchor = Cursor.of(queries.page(store, q, NOW, limit=1, after=Cursor.of(
        queries.page(store, q, NOW, limit=20, order=order)[-1]), order=order)[0])
    assert anchor.id == want[20]
    assert queries.newer_than(store, q, NOW, anchor, order) == 20
    # counted from the end instead (what the pager does near the last page): the same position
    assert queries.newer_than(store, q, NOW, anchor, order, total=len(runs)) == 20
    assert queries.newer_than(store, q, NOW, Cursor.of(last[0]), order,
                              total=len(runs)) == len(runs) - 6
    assert [r.id for r in queries.page(store, q, NOW, limit=5, before=anchor, order=order)] \
        == want[15:20]
    assert [r.id for r in queries.page(store, q, NOW, limit=5, at=anchor, order=order)] \
        == want[20:25]
    single = queries.row(store, want[20], order)
    assert single is not None and Cursor.of(single) == anchor


def test_a_bad_sort_key_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="sort key: expected one of created, started, "
                                         "duration, got 'size'"):
        Order("size")


def test_custom_range_is_from_inclusive_to_exclusive(store: SQLiteStore) -> None:
    runs = [_run(NOW - s, RunStatus.COMPLETED, NOW - s, 1.0) for s in (400, 300, 200, 100)]
    write(store, runs)

    def ids(q: RunQuery) -> set[str]:
        return {r.id for r in queries.page(store, q, NOW, limit=10)}

    assert ids(RunQuery(since_at=NOW - 300)) == {runs[1].id, runs[2].id, runs[3].id}
    assert ids(RunQuery(until_at=NOW - 200)) == {runs[0].id, runs[1].id}
    assert ids(RunQuery(since_at=NOW - 300, until_at=NOW - 200)) == {runs[1].id}
    assert queries.count(store, RunQuery(since_at=NOW - 300, until_at=NOW - 200), NOW) == 1
    # with a preset range too, both apply
    assert ids(RunQuery(since=250.0, until_at=NOW - 150)) == {runs[2].id}


def test_typed_range_bounds_read_dates_times_and_durations() -> None:
    now = datetime(2026, 3, 4, 15, 0).astimezone().timestamp()
    local = datetime(2026, 3, 4, 14, 30).astimezone().timestamp()
    assert parse_when("2026-03-04 14:30", now, "from") == local
    assert parse_when("2026-03-04T14:30:00", now, "from") == local
    assert parse_when("14:30", now, "from") == local
    assert parse_when("9:05", now, "from") == datetime(2026, 3, 4, 9, 5).astimezone().timestamp()
    assert parse_when("2026-03-04T14:30:00+00:00", now, "to") == \
        datetime.fromisoformat("2026-03-04T14:30:00+00:00").timestamp()
    assert parse_when("2h", now, "from") == now - 7200
    assert parse_when("1h30m ago", now, "from") == now - 5400
    assert parse_when("  ", now, "from") is None
    for bad in ("yesterday", "25:99", "2026-13-01", "-2h"):
        with pytest.raises(ConfigurationError, match=f"from: cannot read '{bad}'; use "):
            parse_when(bad, now, "from")


def test_the_batch_filter_and_recent_batches(store: SQLiteStore) -> None:
    a = [_run(NOW - 50, RunStatus.COMPLETED, NOW - 50, 1.0, batch="batch_a") for _ in range(3)]
    b = [_run(NOW - 10, RunStatus.QUEUED, batch="batch_b") for _ in range(2)]
    loose = _run(NOW - 5, RunStatus.COMPLETED, NOW - 5, 1.0)
    write(store, [*a, *b, loose])
    assert queries.recent_batches(store) == [("batch_b", NOW - 10), ("batch_a", NOW - 50)]
    got = queries.page(store, RunQuery(batch_id="batch_a"), NOW, limit=10)
    assert {r.id for r in got} == {r.id for r in a}
    assert queries.count(store, RunQuery(batch_id="batch_b"), NOW) == 2
    # the picker looks at the newest runs only (bounded by the created_at index)
    assert queries.recent_batches(store, window=3) == [("batch_b", NOW - 10)]


def test_the_schedule_filter_keeps_the_runs_that_schedule_created(
        clocked: Engine, clock: ManualClock) -> None:
    @clocked.task(id="report")
    def report(payload: Any, ctx: Any) -> None:
        return None

    hourly = clocked.schedules.create(task="report", cron="0 * * * *", deduplication_key="h")
    daily = clocked.schedules.create(task="report", cron="0 0 * * *", deduplication_key="d")
    by_hand = report.trigger({"schedule_id": "sched_not_a_schedule"})
    clock.advance(86400)
    runs = clocked.runs.list(task_id="report", limit=100)
    clocked.wait_results([r.id for r in runs], timeout=20)
    store, now = clocked.store, clock.now()

    def ids(sid: str) -> list[str]:
        return [r.id for r in queries.page(store, RunQuery(schedule_id=sid), now, limit=100)]

    hourly_runs, daily_runs = ids(hourly.id), ids(daily.id)
    assert len(hourly_runs) == 24 and len(daily_runs) == 1
    assert not set(hourly_runs) & set(daily_runs)
    assert set(hourly_runs) | set(daily_runs) | {by_hand.id} == {r.id for r in runs}
    assert queries.count(store, RunQuery(schedule_id=daily.id), now) == 1
    assert ids("sched_not_a_schedule") == []  # a payload alone does not make a scheduled run
    assert [c[0] for c in queries.schedule_choices(store)] == sorted([hourly.id, daily.id])


def _plan(store: SQLiteStore, sql: str, params: tuple[Any, ...]) -> str:
    _, rows = store.select("EXPLAIN QUERY PLAN " + sql, params)
    return " | ".join(str(r[-1]) for r in rows)


def test_filters_are_served_by_indexes(store: SQLiteStore) -> None:
    """The default order walks the created_at index; a schedule filter first narrows to its
    task's index range; the custom range is an index range on created_at."""
    write(store, history(random.Random(1), 30, NOW - 100))
    for q in (RunQuery(), RunQuery(since_at=NOW - 50, until_at=NOW - 10)):
        where, params = q.where(NOW)
        plan = _plan(store, f"SELECT id FROM runs{where} ORDER BY created_at DESC, id DESC "
                     "LIMIT 20", tuple(params))
        assert "runs_created" in plan and "SCAN runs" not in plan.replace(
            "SCAN runs USING INDEX", ""), plan
    where, params = RunQuery(schedule_id="sched_x").where(NOW)
    plan = _plan(store, f"SELECT COUNT(*) FROM runs{where}", tuple(params))
    assert "runs_task" in plan, plan


def test_every_sorted_page_and_position_is_read_from_an_index(store: SQLiteStore) -> None:
    """First, next, previous and last pages and the position, in every order: each is a walk or
    a range of an index (the schema's sort indexes for "started" and "duration", merged with the
    queued runs found by the status index), never a scan of the history; and the batch filter
    is served by its index. A scan per page is what made a sorted page cost 300 ms at 100,000
    runs (benchmarks/dashboard.py)."""
    write(store, history(random.Random(2), 30, NOW - 100))
    ran: list[tuple[str, tuple[Any, ...]]] = []
    select = store.select

    def spy(sql: str, params: tuple[Any, ...] = ()) -> Any:
        ran.append((sql, tuple(params)))
        return select(sql, params)

    store.select = spy  # type: ignore[method-assign]
    q = RunQuery()
    for order in ORDERS:
        first = queries.page(store, q, NOW, limit=5, order=order)
        second = queries.page(store, q, NOW, limit=5, after=Cursor.of(first[-1]), order=order)
        queries.page(store, q, NOW, limit=5, before=Cursor.of(second[0]), order=order)
        last = queries.page(store, q, NOW, limit=5, last=True, order=order)
        queries.newer_than(store, q, NOW, Cursor.of(last[0]), order)
    queries.page(store, RunQuery(batch_id="batch_x"), NOW, limit=5)
    store.select = select  # type: ignore[method-assign]
    # four pages per order, and a position: one count per part (two parts but for "created")
    assert len(ran) == len(ORDERS) * 5 + 4 + 1
    for sql, params in ran:
        plan = _plan(store, sql, params)
        scans = plan.replace("SCAN runs USING INDEX", "")
        assert "SCAN runs" not in scans, (sql, plan)  # no full scan of the table
        if "UNION ALL" in sql:  # a sorted page: the sort's index merged with the queued runs
            key = "started" if "COALESCE(started_at, 1e300) AS" in sql else "duration"
            assert f"INDEX runs_sort_{key}" in plan and "INDEX runs_status" in plan, plan
            assert plan.count("TEMP B-TREE") == 1, plan  # only the queued runs are sorted
        elif "batch_id" in sql:
            assert "INDEX runs_batch" in plan, plan
        elif "created_at AS sort_key" in sql or re.search(r"created_at [<>]= \?", sql):
            assert "INDEX runs_created" in plan, plan
        else:  # a position's count over one part
            assert any(f"INDEX {name}" in plan for name in (
                "runs_sort_started", "runs_sort_duration", "runs_status")), plan


def test_a_queued_run_is_in_no_sort_index_until_it_starts_or_ends(store: SQLiteStore,
                                                                   db_path: Path) -> None:
    """The sort indexes are partial: a new run's insert (the trigger path) writes neither; a run
    enters them when it starts, or when it ends without starting."""
    import sqlite3
    from contextlib import closing
    queued, started, dropped = (_run(NOW, RunStatus.QUEUED),
                                _run(NOW, RunStatus.EXECUTING, started=NOW + 1),
                                _run(NOW, RunStatus.CANCELED))
    write(store, [queued, started, dropped])
    with closing(sqlite3.connect(db_path)) as conn, conn:
        for index in ("runs_sort_started", "runs_sort_duration"):
            # a read forced through the index visits exactly the entries it holds
            held = {r[0] for r in conn.execute(
                f"SELECT id FROM runs INDEXED BY {index} WHERE {SORTED_RUNS}")}
            assert held == {started.id, dropped.id}, index


def test_the_sort_keys_are_spelled_the_same_in_every_process() -> None:
    """An index made by one kernel must match the queries of the next one."""
    import os
    import subprocess
    import sys
    code = "from nbtasks.notebook.queries import SORT_KEYS; print(SORT_KEYS['duration'])"
    spelled = {subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3", "4")}
    assert len(spelled) == 1, spelled


def test_the_sort_indexes_and_the_queued_part_cover_every_status() -> None:
    """The indexes' "is final" is spelled out status by status in the schema: a new final
    status needs a new schema version, or its unstarted runs would drop out of both parts of a
    sorted page."""
    from nbtasks.stores.sqlite import _IS_FINAL
    assert set(re.findall(r"status = '(\w+)'", _IS_FINAL)) == {s.value for s in FINAL}
    assert set(queries.ACTIVE_STATUSES) | {s.value for s in FINAL} == {s.value for s in RunStatus}
