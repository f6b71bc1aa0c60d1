"""History at scale: DataFrames over a large stored history, and kernel memory.

    python benchmarks/history.py                 # both parts
    python benchmarks/history.py --part frames -n 1000000
    python benchmarks/history.py --part rss --runs 100000

frames: fills a real SQLite file with N attempts (N/2 runs of two attempts each, written
straight into the schema), then times `runs.attempts_dataframe()` and `runs.to_dataframe()`.
The baseline, measured in the same process on the same file, reads the same join through the
ADBC SQLite driver into Arrow, in one query, and makes a pandas frame with the same dtypes: what
the data costs with no Python object per value. nbtasks takes that path itself when the `arrow`
extra is installed (`--stdlib` times the fallback path instead), and reads a large history in
parts, one thread per core; `to_dataframe()` is also timed read in one query, to show what the
parts save (CPU stays about the same; wall time drops when cores are free).

rss: the process's resident memory with an engine started, then after N no-op runs have been
triggered (batches of 500), finished and left the kernel. History lives in the store, so the
difference should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator

import pandas as pd
import psutil

import nbtasks
from nbtasks._models import MACHINES as PRESETS
from nbtasks._runstate import ATTEMPT_COLUMNS, RUN_COLUMNS
from nbtasks.stores.sqlite import SQLiteStore

TASKS = ["etl", "report", "scrape", "train", "notify"]
MACHINES = ["kernel", "micro", "small-1x", "medium-1x"]
ERRORS = [("TimeoutError", "read timed out"), ("ValueError", "bad row 17"),
          ("KernelRestartError", "the kernel stopped while attempt 1 was executing")]


def fill(path: str, n_attempts: int, seed: int = 1) -> None:
    """N/2 runs of two attempts each (a failure, then a success), written in one transaction."""
    rng = random.Random(seed)
    store = SQLiteStore(path)
    store.open()
    store.close()
    import sqlite3

    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN")
    run_sql = (f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})")
    att_sql = (f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})")
    t0 = 1_780_000_000.0
    runs, attempts = [], []
    for i in range(n_attempts // 2):
        rid = f"run_{i:021d}"
        task = TASKS[i % len(TASKS)]
        machine = MACHINES[i % len(MACHINES)]
        created = t0 + i * 0.01
        d1, d2 = rng.random(), rng.random() * 3
        etype, emsg = ERRORS[i % len(ERRORS)]
        tags = '["nightly"]' if i % 3 == 0 else None
        row = dict.fromkeys(RUN_COLUMNS)
        row.update(id=rid, task_id=task, status="COMPLETED", payload="{}", output="{}",
                   attempt_count=2, created_at=created, started_at=created,
                   finished_at=created + d1 + d2 + 1, updated_at=created + d1 + d2 + 1,
                   queued_at=created, tags=tags, is_test=0, queue=f"task/{task}",
                   machine=machine, priority=0.0, owner="bench", seq=i)
        runs.append(tuple(row[c] for c in RUN_COLUMNS))
        attempts.append((rid, 1, "FAILED", created, created + d1, machine, f"task/{task}",
                         etype, emsg, None))
        attempts.append((rid, 2, "COMPLETED", created + d1 + 1, created + d1 + d2 + 1, machine,
                         f"task/{task}", None, None, None))
        if len(attempts) >= 200_000:
            con.executemany(run_sql, runs)
            con.executemany(att_sql, attempts)
            runs, attempts = [], []
    con.executemany(run_sql, runs)
    con.executemany(att_sql, attempts)
    con.execute("COMMIT")
    con.close()


ADBC_JOIN = (
    "SELECT a.run_id, r.task_id, a.number, a.status, a.started_at, a.finished_at, a.machine, "
    "r.queue, r.concurrency_key, a.error_type, a.error_message, r.tags "
    "FROM runs r CROSS JOIN attempts a ON a.run_id = r.id ORDER BY r.rowid, a.number")
STATUSES = [s.value for s in nbtasks.RunStatus]


def adbc_baseline(path: str) -> pd.DataFrame:
    """The attempts join read through ADBC into Arrow, then pandas with the frame's dtypes."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from adbc_driver_sqlite import dbapi

    with dbapi.connect(path) as conn, conn.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(1 << 20)})
        cur.execute(ADBC_JOIN)
        table = cur.fetch_arrow_table()
    text = pd.array([], dtype="str").dtype

    def strings(i: int) -> object:
        col = table.column(i)
        if col.type != pa.string():  # all NULL: the driver had nothing to infer a type from
            col = pa.nulls(len(col), pa.string())
        return col.to_pandas(types_mapper={pa.string(): text}.get).array

    def times(i: int) -> pd.DatetimeIndex:
        return pd.to_datetime(table.column(i).to_numpy(), unit="s", utc=True).as_unit("ns")

    def category(i: int, order: list[str] | None = None) -> pd.Categorical:
        """Categories sorted (or in `order`, as statuses and machines are), like the frame's."""
        codes = pc.dictionary_encode(table.column(i).combine_chunks())
        cat = pd.Categorical.from_codes(codes.indices.fill_null(-1).to_numpy(),
                                        categories=pd.Index(codes.dictionary.to_pylist(),
                                                            dtype="str"))
        if order is None:
            return cat.reorder_categories(sorted(cat.categories))
        if order is STATUSES:
            return cat.set_categories(order)
        return cat.reorder_categories([c for c in order if c in set(cat.categories)])

    tag_codes, tag_texts = pd.factorize(table.column(11).to_numpy(zero_copy_only=False))
    tag_table = np.array([*(tuple(json.loads(t)) for t in tag_texts), ()], dtype=object)
    started, finished = times(4), times(5)
    return pd.DataFrame({
        "run_id": strings(0), "task_id": category(1),
        "attempt": table.column(2).to_numpy(), "status": category(3, STATUSES),
        "started_at": started, "finished_at": finished,
        "duration_ms": (table.column(5).to_numpy() - table.column(4).to_numpy()) * 1000.0,
        "machine": category(6, list(PRESETS)), "queue": category(7),
        "concurrency_key": strings(8), "error_type": category(9), "error_message": strings(10),
        "tags": tag_table[tag_codes],
    }, copy=False)


def _cpu() -> float:
    """CPU seconds of this process and of the Arrow reader process, if one is running."""
    from nbtasks import _arrow

    reader = getattr(_arrow, "_process", None)
    if reader is None or reader.poll() is not None:
        return time.process_time()
    times = psutil.Process(reader.pid).cpu_times()
    return time.process_time() + times.user + times.system


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; the result is dropped before the next is timed."""
    gc.collect()
    fn_cpu = _cpu()
    wall = time.perf_counter()
    fn()
    wall = time.perf_counter() - wall
    return wall, _cpu() - fn_cpu


def _best(timings: list[tuple[float, float]]) -> tuple[float, float]:
    return min(t[0] for t in timings), min(t[1] for t in timings)


@contextlib.contextmanager
def _one_query() -> Iterator[None]:
    """Frames read in one query, as on a one-core machine: what the parallel parts save."""
    from nbtasks import frames as nb_frames

    saved, nb_frames._MAX_PARTS = nb_frames._MAX_PARTS, 1
    try:
        yield
    finally:
        nb_frames._MAX_PARTS = saved


def frames(n: int, stdlib: bool) -> None:
    from nbtasks import _arrow
    from nbtasks import frames as nb_frames

    if stdlib:
        _arrow.AVAILABLE = False
    path_name = "stdlib sqlite3" if not _arrow.AVAILABLE else "ADBC -> Arrow"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "runs.db")
        t = time.perf_counter()
        fill(path, n)
        print(f"filled {n:,} attempts ({n // 2:,} runs) in {time.perf_counter() - t:.1f} s")
        with nbtasks.Engine(store=path) as eng:
            ours, base, runs_times, runs_one = [], [], [], []
            for _ in range(3):  # interleaved, so a busy moment of the machine hits all of them
                ours.append(_timed(eng.runs.attempts_dataframe))
                base.append(_timed(lambda: adbc_baseline(path)))
                runs_times.append(_timed(eng.runs.to_dataframe))
                with _one_query():
                    runs_one.append(_timed(eng.runs.to_dataframe))
            df = eng.runs.attempts_dataframe()
            assert len(df) == n, len(df)
            pd.testing.assert_frame_equal(df, adbc_baseline(path))  # the same frame, really
            runs = eng.runs.to_dataframe()
            assert len(runs) == n // 2
            with _one_query():
                pd.testing.assert_frame_equal(runs, eng.runs.to_dataframe(), check_exact=True)
            parts = len(nb_frames._rowid_ranges(eng.store, "runs r")) or 1
        (wall, cpu), (ref_wall, ref_cpu) = _best(ours), _best(base)
        (runs_wall, runs_cpu), (one_wall, one_cpu) = _best(runs_times), _best(runs_one)
        print("best of 3; wall and CPU seconds (CPU is what a busy shared machine distorts least; "
              "CPU counts every thread, and the Arrow reader process's; wall is what a user waits)")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average {load} on {os.cpu_count()} cores")
        if _arrow.AVAILABLE:
            print(f"a large history is read in {parts} parts, one thread each (one per core)")
        print(f"attempts_dataframe(), {n:,} rows ({path_name}): {wall:6.2f} s  cpu {cpu:6.2f} s")
        print(f"baseline: the same join via ADBC -> Arrow -> pandas, one query: {ref_wall:6.2f} s  "
              f"cpu {ref_cpu:6.2f} s")
        print(f"  ratio {wall / ref_wall:.2f} wall, {cpu / ref_cpu:.2f} cpu (target <= 1.2)")
        print(f"to_dataframe(), {n // 2:,} runs: {runs_wall:6.2f} s  cpu {runs_cpu:6.2f} s  "
              f"(target <= 1.5 s, goal <= 1 s)")
        print(f"  the same frame read in one query: {one_wall:6.2f} s  cpu {one_cpu:6.2f} s")
        mb = df.memory_usage(deep=True).sum() / 2**20
        print(f"the attempts frame holds {mb:,.0f} MB")


def rss(n: int) -> None:
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        eng = nbtasks.Engine(store=os.path.join(tmp, "runs.db"))

        async def noop(payload: int, ctx: object) -> int:
            return payload

        task = eng.task(id="noop", run=noop)
        task.batch_trigger(list(range(500))).wait()  # warm up: threads, caches, first pages
        gc.collect()
        base = proc.memory_info().rss
        t = time.perf_counter()
        for start in range(0, n, 500):
            task.batch_trigger(list(range(start, min(n, start + 500)))).wait()
        elapsed = time.perf_counter() - t
        gc.collect()
        after = proc.memory_info().rss
        active = len(eng.scheduler.active)
        rest = _without_page_cache(eng, proc)
        eng.close()
    print(f"{n:,} runs finished in {elapsed:.1f} s; still in memory: {active} runs")
    print(f"kernel RSS: baseline {base / 2**20:.0f} MB, after {after / 2**20:.0f} MB, "
          f"above baseline {(after - base) / 2**20:.1f} MB (target <= 30 MB, goal 10 MB)")
    if rest is not None:
        print(f"  of which SQLite's page cache (capped by its cache_size): "
              f"{(after - rest) / 2**20:.1f} MB; the rest: {(rest - base) / 2**20:.1f} MB")


def _without_page_cache(eng: nbtasks.Engine, proc: psutil.Process) -> int | None:
    """RSS once SQLite has dropped its page caches and malloc has returned free memory (glibc)."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    if libc is None or not hasattr(ctypes.CDLL(libc), "malloc_trim"):
        return None
    store = eng.store
    eng.runtime.call(eng.writer.barrier)
    with store._lock:  # type: ignore[attr-defined]
        for conn in [store._writer, *store._readers]:  # type: ignore[attr-defined]
            conn.execute("PRAGMA shrink_memory")
    gc.collect()
    ctypes.CDLL(libc).malloc_trim(0)
    return int(proc.memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["frames", "rss", "both"], default="both")
    parser.add_argument("-n", type=int, default=1_000_000, help="attempts for the frames part")
    parser.add_argument("--runs", type=int, default=100_000, help="runs for the rss part")
    parser.add_argument("--stdlib", action="store_true",
                        help="time the frames' stdlib path even if the arrow extra is installed")
    args = parser.parse_args()
    if args.part in ("rss", "both"):
        rss(args.runs)  # first, so the big frame does not inflate the figure
    if args.part in ("frames", "both"):
        frames(args.n, args.stdlib)


if __name__ == "__main__":
    main()
