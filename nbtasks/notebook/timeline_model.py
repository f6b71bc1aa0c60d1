"""The timeline's data: the runs of one time window, per queue, as plain JSON for the widget.

>>> data = build_timeline(engine.store, engine.clock.now(), window=3600)   # doctest: +SKIP
>>> [(q["name"], q["mode"], q["count"]) for q in data["queues"]]
[('task/report', 'runs', 12), ('task/burst', 'summary', 2000)]

The query is by the window: every run whose life overlaps it (created in it, or created before
and still going or ending inside it), not the newest N runs overall, so a burst on one queue
never hides the others. Queues are drawn run by run, smallest first, while the total stays
under `max_bars`; a queue that would not fit is summarised: per time bucket, how many runs
started in it, by status. Two indexed scans of the window, whatever the history's size.
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


def _overlapping(store: Store, since: float, now: float, queues: list[str] | None,
                 window: float) -> list[tuple[Any, ...]]:
    """Rows of runs overlapping [since, now]: created in it, or before it and not over by then.

    Runs created before the window are looked for one window further back (plus any still
    active, however old): a run that ran longer than that and ended inside the window is left
    out rather than scanning the whole history.
    """
    qfilter, qparams = "", []
    if queues is not None:
        qfilter = f" AND queue IN ({', '.join('?' * len(queues))})"
        qparams = list(queues)
    marks = ", ".join("?" * len(_ACTIVE))
    _, rows = store.select(
        f"SELECT {_COLUMNS} FROM runs WHERE created_at >= ? AND created_at <= ?{qfilter} "
        f"UNION SELECT {_COLUMNS} FROM runs WHERE created_at >= ? AND created_at < ? "
        f"AND finished_at >= ?{qfilter} "
        f"UNION SELECT {_COLUMNS} FROM runs WHERE status IN ({marks}) AND created_at < ?{qfilter}",
        (since, now, *qparams, since - window, since, since, *qparams, *_ACTIVE, since,
         *qparams))
    return rows


def build_timeline(store: Store, now: float, window: float, *, max_bars: int = MAX_BARS,
                   buckets: int = BUCKETS) -> dict[str, Any]:
    """What the timeline draws for the `window` seconds up to `now`."""
    since = now - window
    _, counted = store.select(
        "SELECT COALESCE(queue, ''), COUNT(*) FROM runs WHERE created_at >= ? AND created_at <= ? "
        "GROUP BY queue", (since, now))
    counts = {q: n for q, n in counted}
    detailed: list[str] = []
    summarised: list[str] = []
    budget = max_bars
    for queue, n in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])):
        if n <= budget:
            detailed.append(queue)
            budget -= n
        else:
            summarised.append(queue)
    rows = _overlapping(store, since, now, None if not summarised else detailed, window)
    # runs from before the window on a summarised queue still show as bars (a handful)
    by_queue: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_queue.setdefault(r[2] or "", []).append(r)
    if summarised:
        marks = ", ".join("?" * len(_ACTIVE))
        _, older = store.select(
            f"SELECT {_COLUMNS} FROM runs WHERE status IN ({marks}) AND created_at < ? AND "
            f"queue IN ({', '.join('?' * len(summarised))})", (*_ACTIVE, since, *summarised))
        for r in older:
            by_queue.setdefault(r[2] or "", []).append(r)
    width = window / buckets
    summary: list[dict[str, Any]] = []
    if summarised:
        _, grouped = store.select(
            "SELECT COALESCE(queue, ''), status, "
            "CAST((COALESCE(started_at, created_at) - ?) / ? AS INTEGER) AS b, COUNT(*) "
            f"FROM runs WHERE created_at >= ? AND created_at <= ? AND queue IN "
            f"({', '.join('?' * len(summarised))}) GROUP BY queue, b, status",
            (since, width, since, now, *summarised))
        cells: dict[tuple[str, int], dict[str, int]] = {}
        for queue, status, b, n in grouped:
            index = min(max(int(b), 0), buckets - 1)
            cell = cells.setdefault((queue, index), {})
            cell[status] = cell.get(status, 0) + n
        summary = [{"queue": q, "start": since + i * width, "end": since + (i + 1) * width,
                    "counts": c, "total": sum(c.values())} for (q, i), c in sorted(cells.items())]
    queues: list[dict[str, Any]] = []
    bars: list[dict[str, Any]] = []
    for name in sorted(set(by_queue) | set(summarised)):
        members = sorted(by_queue.get(name, []), key=lambda r: r[4])
        lanes = assign_lanes([(r[5] if r[5] is not None else r[4],
                               r[6] if r[6] is not None else now) for r in members])
        bars += [{"id": r[0], "task": r[1], "queue": name, "status": r[3], "created": r[4],
                  "started": r[5], "ended": r[6] if r[3] in FINAL else None, "lane": lane}
                 for r, lane in zip(members, lanes, strict=True)]
        queues.append({"name": name, "mode": "summary" if name in summarised else "runs",
                       "count": counts.get(name, 0) if name in summarised else len(members),
                       "lanes": max(lanes, default=-1) + 1})
    return {"now": now, "window": window, "start": since, "queues": queues, "bars": bars,
            "summary": summary, "bucket": width,
            "summarised": sum(counts[q] for q in summarised)}


__all__ = ("BUCKETS", "MAX_BARS", "MAX_LANES", "assign_lanes", "build_timeline")
