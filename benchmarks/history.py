"""History at scale: attempts_dataframe() over 1,000,000 stored attempts, and kernel memory.

    python benchmarks/history.py                 # both parts
    python benchmarks/history.py --part frames -n 1000000
    python benchmarks/history.py --part rss --runs 100000

frames: fills a real SQLite file with N attempts (N/2 runs of two attempts each, written
straight into the schema), then times `runs.attempts_dataframe()` and `runs.to_dataframe()`.
The reference, measured in the same process, is building a DataFrame of the same shape from
ready column lists: what pandas itself costs before any query.

rss: the process's resident memory with an engine started, then after N no-op runs have been
triggered (batches of 500), finished and left the kernel. History lives in the store, so the
difference should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import tempfile
import time

import pandas as pd
import psutil

import nbtasks
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


def reference(n: int) -> float:
    """A DataFrame of the attempts frame's shape from ready column lists: pandas' own cost."""
    rng = random.Random(2)
    cols = {
        "run_id": [f"run_{i // 2:021d}" for i in range(n)],
        "task_id": [TASKS[i % 5] for i in range(n)],
        "attempt": [1 + i % 2 for i in range(n)],
        "status": ["FAILED" if i % 2 == 0 else "COMPLETED" for i in range(n)],
        "started_at": [1_780_000_000.0 + i for i in range(n)],
        "finished_at": [1_780_000_001.0 + i for i in range(n)],
        "duration_ms": [rng.random() * 1000 for _ in range(n)],
        "machine": [MACHINES[i % 4] for i in range(n)],
        "queue": [f"task/{TASKS[i % 5]}" for i in range(n)],
        "concurrency_key": [None] * n,
        "error_type": [ERRORS[i % 3][0] if i % 2 == 0 else None for i in range(n)],
        "error_message": [ERRORS[i % 3][1] if i % 2 == 0 else None for i in range(n)],
        "tags": [("nightly",) if i % 3 == 0 else () for i in range(n)],
    }
    t = time.perf_counter()
    pd.DataFrame(cols)
    return time.perf_counter() - t


def frames(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "runs.db")
        t = time.perf_counter()
        fill(path, n)
        print(f"filled {n:,} attempts ({n // 2:,} runs) in {time.perf_counter() - t:.1f} s")
        with nbtasks.Engine(store=path) as eng:
            timings = []
            for _ in range(3):
                gc.collect()
                t = time.perf_counter()
                df = eng.runs.attempts_dataframe()
                timings.append(time.perf_counter() - t)
            assert len(df) == n, len(df)
            t = time.perf_counter()
            runs_df = eng.runs.to_dataframe()
            runs_time = time.perf_counter() - t
            assert len(runs_df) == n // 2
        ref = min(reference(n) for _ in range(3))
        best = min(timings)
        print(f"attempts_dataframe(), {n:,} rows:   {best:6.2f} s  (best of 3; target <= 3 s)")
        print(f"reference: DataFrame from column lists: {ref:6.2f} s  -> ratio {best / ref:.1f}x")
        print(f"to_dataframe(), {n // 2:,} rows:        {runs_time:6.2f} s")
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
          f"above baseline {(after - base) / 2**20:.1f} MB (target <= 100 MB)")
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
    args = parser.parse_args()
    if args.part in ("rss", "both"):
        rss(args.runs)  # first, so the big frame does not inflate the figure
    if args.part in ("frames", "both"):
        frames(args.n)


if __name__ == "__main__":
    main()
