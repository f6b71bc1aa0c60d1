"""The timeline's data: the runs of one time window, per queue, as plain JSON for the widget.

>>> data = build_timeline(engine.store, engine.clock.now(), window=3600)   # doctest: +SKIP
>>> [(q["name"], q["mode"], q["count"]) for q in data["queues"]]
[('task/report', 'runs', 12), ('task/burst', 'summary', 2000)]

The query is by the window: every run whose life overlaps it (created in it, or created before
and still going or ending inside it), not the newest N runs overall, so a burst on one queue
never hides the others. Queues are drawn run by run, smallest first, while the total stays
under `max_bars`; a queue that would not fit is summarised: per time bucket, how many runs
started in it, by status. One grouped scan of the window, then the rows of the queues drawn run by run.
"""

from __future__ import annotations

import heapq
from typing import Any

from .._status import FINAL, RunStatus
from ..stores import Store

MAX_LANES = 8
MAX_BARS = 1500
BUCKETS = 120
_ACTIVE = tuple(s.value for s in RunStatus if s not in FINAL)
_COLUMNS = "id, task_id, queue, status, created_at, started_at, finished_at"


def assign_lanes(spans: list[tuple[float, float]]) -> list[int]:
    """Interval packing: each (start, end) takes the lowest free lane; at most MAX_LANES.

    >>> assign_lanes([(0, 10), (1, 2), (3, 4), (11, 12)])
    [0, 1, 1, 0]
    """
    busy: list[tuple[float, int]] = []  # (end, lane) of lanes in use
    free: list[int] = []
    used = 0
    lanes = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda i: spans[i]):
        start, end = spans[i]
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        elif used < MAX_LANES:
            lane, used = used, used + 1
        else:  # more at once than lanes: share the one that frees up first
            lane = heapq.heappop(busy)[1]
        lanes[i] = lane
        heapq.heappush(busy, (end, lane))
    return lanes


def _rows(store: Store, sql: str, params: list[Any], queues: list[str]) -> list[tuple[Any, ...]]:
    marks = ", ".join("?" * len(queues))
    _, rows = store.select(f"{sql} AND queue IN ({marks})", (*params, *queues))
    return rows


def build_timeline(store: Store, now: float, window: float, *, max_bars: int = MAX_BARS,
                   buckets: int = BUCKETS) -> dict[str, Any]:
    """What the timeline draws for the `window` seconds up to `now`.

    One grouped scan of the window counts runs per queue, time bucket and status; then only
    the queues drawn run by run are read row by row.
    """
    since = now - window
    width = window / buckets
    _, grouped = store.select(
        "SELECT COALESCE(queue, ''), status, "
        "CAST((COALESCE(started_at, created_at) - ?) / ? AS INTEGER) AS b, COUNT(*) "
        "FROM runs WHERE created_at >= ? AND created_at <= ? GROUP BY queue, b, status",
        (since, width, since, now))
    counts: dict[str, int] = {}
    for queue, _status, _b, n in grouped:
        counts[queue] = counts.get(queue, 0) + n
    detailed: list[str] = []
    summarised: list[str] = []
    budget = max_bars
    for queue, n in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])):
        if n <= budget:
            detailed.append(queue)
            budget -= n
        else:
            summarised.append(queue)
    rows = _rows(store, f"SELECT {_COLUMNS} FROM runs WHERE created_at >= ? AND created_at <= ?",
                 [since, now], detailed) if detailed else []
    # Before the window: runs still going, and runs that ended inside it, of any age. Both
    # are index ranges (finished_at, and status), so the history before the window is not read.
    marks = ", ".join("?" * len(_ACTIVE))
    _, older = store.select(
        f"SELECT {_COLUMNS} FROM runs WHERE finished_at >= ? AND created_at < ? "
        f"UNION SELECT {_COLUMNS} FROM runs WHERE status IN ({marks}) AND created_at < ?",
        (since, since, *_ACTIVE, since))
    by_queue: dict[str, list[tuple[Any, ...]]] = {}
    for r in [*rows, *older]:
        by_queue.setdefault(r[2] or "", []).append(r)
    cells: dict[tuple[str, int], dict[str, int]] = {}
    wanted = set(summarised)
    for queue, status, b, n in grouped:
        if queue in wanted:
            cell = cells.setdefault((queue, min(max(int(b), 0), buckets - 1)), {})
            cell[status] = cell.get(status, 0) + n
    summary = [{"queue": q, "start": since + i * width, "end": since + (i + 1) * width,
                "counts": c, "total": sum(c.values())} for (q, i), c in sorted(cells.items())]
    queues: list[dict[str, Any]] = []
    bars: list[dict[str, Any]] = []
    for name in sorted(set(by_queue) | wanted):
        members = sorted(by_queue.get(name, []), key=lambda r: r[4])
        lanes = assign_lanes([(r[5] if r[5] is not None else r[4],
                               r[6] if r[6] is not None else now) for r in members])
        bars += [{"id": r[0], "task": r[1], "queue": name, "status": r[3], "created": r[4],
                  "started": r[5], "ended": r[6] if r[3] in FINAL else None, "lane": lane}
                 for r, lane in zip(members, lanes, strict=True)]
        queues.append({"name": name, "mode": "summary" if name in wanted else "runs",
                       "count": counts[name] if name in wanted else len(members),
                       "lanes": max(lanes, default=-1) + 1})
    return {"now": now, "window": window, "start": since, "queues": queues, "bars": bars,
            "summary": summary, "bucket": width,
            "summarised": sum(counts[q] for q in summarised)}


__all__ = ("BUCKETS", "MAX_BARS", "MAX_LANES", "assign_lanes", "build_timeline")
