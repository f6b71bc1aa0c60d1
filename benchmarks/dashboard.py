"""Dashboard responsiveness on a big history: kernel time to open it and to change a filter.

    python benchmarks/dashboard.py              # 100,000 runs
    python benchmarks/dashboard.py -n 20000 --repeat 3

The store is filled through its own write path (one transaction of realistic rows: five tasks,
mixed statuses, tags on some, one attempt each), then an Engine opens it. Each figure is the
median of `--repeat` tries, measured twice:

- in this process, where widgets have no frontend, so it is pure Python and SQLite time;
- inside a real Jupyter kernel (jupyter_client), where every widget also sends its comm
  messages: that is the kernel time a notebook user waits for.

"sort ...": each of the table's six sorts, timed alone: picking it (its first page), then the
next page and the last page; each figure includes the count and the position the pager shows.
The batch and custom-range filters are the table's other pickers. `--index-cost` prints instead
what the schema's two sort indexes cost a run's writes (insert, start, end), in CPU time.

"open" is `nbtasks.dashboard(engine)` up to its first complete render ("cold" is the first one
in the process, with the ipywidgets import). The target is < 200 ms for opening, for each
filter change and for each page of each sort. "tick" is the once-a-second refresh of a
dashboard on screen; "hidden" is the feed's call on a dashboard whose page reported it off
screen, with a burst of events: it must cost next to nothing (no query, no widget message).
Nothing here is an assertion: it prints the figures, and the machine's load average (the
figures scale with it on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

TASKS = ("etl", "send-email", "resize-image", "nightly-report", "sync-user")
TARGET_MS = 200.0


def fill_store(path: str, n: int, seed: int = 1) -> None:
    """Write `n` finished runs spread over the last ~2 hours, newest at `now`."""
    from nbtasks._runstate import AttemptState, RunState, new_id
    from nbtasks._status import RunStatus
    from nbtasks.stores import SQLiteStore, WriteBatch

    rng = random.Random(seed)
    statuses = [RunStatus.COMPLETED] * 8 + [RunStatus.FAILED, RunStatus.CANCELED]
    now = time.time()
    step = 7200 / n
    runs, attempts = [], []
    for i in range(n):
        created = now - 7200 + i * step
        task = rng.choice(TASKS)
        run = RunState(new_id("run_"), task, json.dumps({"i": i}), created)
        run.status = rng.choice(statuses)
        run.started_at = created + 0.01
        run.finished_at = run.updated_at = run.started_at + rng.random() * 3
        run.attempt_count = 1
        run.seq = i
        run.owner = "eng_benchmark"
        run.queue = f"task/{task}"
        run.machine = "kernel"
        if i % 7 == 0:
            run.tags = ["nightly"]
        if i % 1000 < 20:  # a 20-run batch every 1,000 runs, for the batch picker
            run.batch_id = f"batch_{i // 1000:06d}"
        if run.status is RunStatus.FAILED:
            run.error = {"type": "ValueError", "message": "boom", "traceback": ""}
        attempt = AttemptState(1, run.started_at, "kernel", run.queue)
        attempt.finished_at = run.finished_at
        attempt.status = "COMPLETED" if run.status is RunStatus.COMPLETED else "FAILED"
        runs.append(run.row())
        attempts.append(attempt.row(run.id))
    store = SQLiteStore(path)
    store.open()
    store.write(WriteBatch(runs=runs, attempts=attempts))
    store.close()


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _median_ms_after(setup: Callable[[], Any], fn: Callable[[], Any], repeat: int) -> float:
    """`fn` timed alone, with `setup` run untimed before each try."""
    times = []
    for _ in range(repeat):
        setup()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(path: str, repeat: int) -> dict[str, float]:
    """Open an engine on `path` and time the dashboard's kernel-side work, in milliseconds."""
    import nbtasks

    out: dict[str, float] = {}
    eng = nbtasks.Engine(store=path)
    try:
        t = time.perf_counter()
        dash = nbtasks.dashboard(eng)
        out["open (cold, first in process)"] = (time.perf_counter() - t) * 1000
        dash.close()

        def open_close() -> None:
            nbtasks.dashboard(eng).close()

        out["open (warm)"] = _median_ms(open_close, repeat)
        out["widget models made by one open (count)"] = float(_models_per_open(eng))
        dash = nbtasks.dashboard(eng)
        table = dash.table

        def flip(widget: Any, value: Any) -> Callable[[], None]:
            def go() -> None:  # typed filters wait for a pause in typing: apply them at once
                widget.value = value
                table.apply_typing_now()
                widget.value = widget.options[0][1] if hasattr(widget, "options") else ""
                table.apply_typing_now()
            return go

        # each flip is two filter changes (set, then clear): halve it
        for name, widget, value in (("status = FAILED", table.status, "FAILED"),
                                    ("task = etl", table.task, "etl"),
                                    ("tag = nightly", table.tag, "nightly"),
                                    ("search ids 'abc'", table.search, "abc")):
            out[f"filter: {name}"] = _median_ms(flip(widget, value), repeat) / 2

        def page() -> None:
            table.older.click()
            table.newer.click()

        out["next page"] = _median_ms(page, repeat) / 2

        # every sort: its first page (picked from another sort), the next page, the last page
        from nbtasks.notebook.runs_table import SORT_OPTIONS
        for label, value in SORT_OPTIONS:
            other = "created:asc" if value == "created:desc" else "created:desc"

            def pick(value: str = value) -> None:
                table.sort.value = value

            def away(other: str = other) -> None:
                table.sort.value = other

            out[f"sort {label}: first page"] = _median_ms_after(away, pick, repeat)
            table.sort.value = value
            out[f"sort {label}: next page"] = _median_ms_after(
                table.first.click, table.older.click, repeat)
            out[f"sort {label}: last page"] = _median_ms_after(
                table.first.click, table.last.click, repeat)
        table.sort.value = "created:desc"
        newest_batch = table.batch.options[1][1]
        out["filter: batch (picked)"] = _median_ms(flip(table.batch, newest_batch), repeat) / 2

        def custom_range() -> None:
            table.range.value = -1.0  # "custom…"
            table.since_at.value, table.until_at.value = "90m", "30m"
            table.apply_typing_now()
            table.range.value = 0.0
            table.since_at.value = table.until_at.value = ""
            table.apply_typing_now()

        out["filter: custom range 90m..30m ago"] = _median_ms(custom_range, repeat) / 3
        out["live refresh (one throttled update)"] = _median_ms(dash.refresh, repeat)
        out["tick while shown (no events)"] = _median_ms(lambda: dash.update([]), repeat)
        events = _events(eng, 100)
        dash.probe.visible = False
        before = dash.refreshes
        out["hidden: feed call with 100 events"] = _median_ms(lambda: dash.update(events), repeat)
        out["hidden: refreshes done (count)"] = float(dash.refreshes - before)
        dash.probe.visible = None
        dash.tabs.selected_index = 3  # draw once to import matplotlib, then time redraws
        out["timeline redraw (last 5 min)"] = _median_ms(dash.timeline.refresh, repeat)
        dash.close()
    finally:
        eng.close()
    return out


def _models_per_open(eng: Any) -> int:
    """Widget models one more open creates: each is a comm opened and a state sent, which is
    what a kernel pays on top of the in-process time."""
    from ipywidgets.widgets.widget import _instances

    import nbtasks

    before = set(_instances)
    dash = nbtasks.dashboard(eng)
    made = len(set(_instances) - before)
    dash.close()
    return made


def _events(eng: Any, n: int) -> list[Any]:
    """`n` real-looking events (the newest runs' ids), as the feed would hand them over."""
    from nbtasks._events import RunEvent
    from nbtasks._status import RunStatus

    ids = [r.id for r in eng.runs.list(limit=n)]
    return [RunEvent("status", i, "etl", RunStatus.COMPLETED, time.time()) for i in ids]


def measure_in_kernel(path: str, repeat: int) -> dict[str, float]:
    """`measure` run inside a fresh Jupyter kernel, so widget comm messages are counted too."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        code = (f"import runpy, json; _m = runpy.run_path({os.path.abspath(__file__)!r}, "
                f"run_name='bench'); print('RESULT' + json.dumps(_m['measure']({path!r}, "
                f"{repeat})))")
        lines: list[str] = []

        def keep(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                lines.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                lines.append("\n".join(msg["content"]["traceback"]))

        kc.execute_interactive(code, timeout=600, output_hook=keep)
        text = "".join(lines)
        if "RESULT" not in text:
            raise RuntimeError(f"the kernel run failed:\n{text}")
        return json.loads(text.split("RESULT", 1)[1].splitlines()[0])  # type: ignore[no-any-return]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def index_cost(n: int, repeat: int) -> dict[str, float]:
    """CPU µs per run of its three writes (the new run's insert, its start, its end) through
    the store's own write path in batches of 64 (a group commit's size under load), with the
    schema's sort indexes and with them dropped: what those indexes cost the run path."""
    import sqlite3
    from contextlib import closing

    from nbtasks._runstate import RunState, new_id
    from nbtasks._status import RunStatus
    from nbtasks.stores import SQLiteStore, WriteBatch

    def once(path: str, drop: bool) -> list[float]:
        store = SQLiteStore(path)
        store.open()
        if drop:
            with closing(sqlite3.connect(path)) as conn, conn:
                conn.execute("DROP INDEX runs_sort_started")
                conn.execute("DROP INDEX runs_sort_duration")
        now = time.time()
        runs = [RunState(new_id("run_"), "etl", "{}", now + i * 1e-4) for i in range(n)]
        for run in runs:
            run.queue, run.machine, run.owner = "task/etl", "kernel", "eng_bench"
        spent = []
        for step in ("insert", "start", "end"):
            for run in runs:
                if step == "start":
                    run.status, run.started_at, run.attempt_count = RunStatus.EXECUTING, now, 1
                elif step == "end":
                    run.status = RunStatus.COMPLETED
                    run.finished_at = run.updated_at = now + 0.5
            rows = [r.row() for r in runs]
            t = time.process_time()
            for i in range(0, n, 64):
                store.write(WriteBatch(runs=rows[i:i + 64], fresh=step == "insert"))
            spent.append((time.process_time() - t) / n * 1e6)
        store.close()
        return spent

    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeat):  # alternated, first one then the other, as the load drifts
            for label, drop in (("with", False), ("without", True))[::1 if k % 2 else -1]:
                spent = once(os.path.join(tmp, f"{label}{k}.db"), drop)
                for step, us in zip(("insert", "start", "end"), spent, strict=True):
                    out.setdefault(f"{step}, {label} sort indexes", []).append(us)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="runs in the store")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-kernel", action="store_true", help="skip the in-kernel figures")
    parser.add_argument("--index-cost", action="store_true",
                        help="only: what the sort indexes cost a run's writes (CPU µs per run)")
    args = parser.parse_args()
    if args.index_cost:
        figures = index_cost(min(args.n, 20_000), args.repeat)
        for step in ("insert", "start", "end"):
            a, b = (figures[f"{step}, {w} sort indexes"] for w in ("with", "without"))
            print(f"{step:7s} with {a:7.1f} µs/run, without {b:7.1f} µs/run: x{a / b:.2f}")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"CPU time of the writing process; load average {load}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "runs.db")
        t = time.perf_counter()
        fill_store(path, args.n)
        print(f"filled {args.n:,} runs in {time.perf_counter() - t:.1f} s "
              f"({os.path.getsize(path) / 1e6:.0f} MB)")
        columns = {"in process": measure(path, args.repeat)}
        if not args.no_kernel:
            columns["in a kernel"] = measure_in_kernel(path, args.repeat)
    names = list(next(iter(columns.values())))
    print(f"\n{'kernel time, median ms':46s}" + "".join(f"{c:>14s}" for c in columns))
    for name in names:
        cells = "".join(f"{columns[c][name]:14.1f}" for c in columns)
        print(f"{name:46s}{cells}")
    worst = max(v for c in columns.values() for k, v in c.items()
                if k.startswith(("open (warm)", "filter", "sort")))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nslowest open/filter/sorted page: {worst:.1f} ms (target < {TARGET_MS:.0f} ms); "
          f"python {sys.version.split()[0]}; load average {load} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
