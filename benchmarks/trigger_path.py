"""The trigger path against SQLite's own speed, measured in the same run.

    python benchmarks/trigger_path.py              # loop of 3,000; bursts of 20,000
    python benchmarks/trigger_path.py --big        # also: the loop on a store of 1,000,000 runs

Baselines: a bare `sqlite3` loop committing one row per transaction (WAL, synchronous=NORMAL),
and bare asyncio (create_task + gather). Printed:

- `trigger()` loop from a cell, µs per run (the call only, then with every handle waited for),
  ÷ the bare one-row commit;
- `batch_trigger` x500 + wait ÷ bare asyncio; `trigger_async` + gather ÷ that batch time;
- the engine loop's longest stall during a 20,000-run burst (a 1 ms ticker on the loop);
- with --big, the `trigger()` loop on a store already holding 1,000,000 runs ÷ on an empty one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

import nbtasks


def bare_sqlite(path: str, n: int) -> float:
    """Seconds per row: one INSERT per transaction, as a durable enqueue at its simplest."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    con.execute("CREATE TABLE IF NOT EXISTS q (id TEXT PRIMARY KEY, payload TEXT, at REAL)")
    t = time.perf_counter()
    for i in range(n):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO q VALUES (?, ?, ?)", (f"r{i:09d}", str(i), time.time()))
        con.execute("COMMIT")
    took = time.perf_counter() - t
    con.close()
    return took / n


def bare_asyncio(n: int) -> float:
    async def noop(i: int) -> None:
        return None

    async def go() -> None:
        await asyncio.gather(*(asyncio.create_task(noop(i)) for i in range(n)))

    t = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - t


def _with_engine(path: str, body: Callable[[nbtasks.Engine, Any], float]) -> float:
    eng = nbtasks.Engine(store=path, concurrency_limit=1000)

    async def noop(payload: int, ctx: object) -> None:
        return None

    task = eng.task(id="noop", run=noop)
    try:
        return body(eng, task)
    finally:
        eng.close()


def trigger_loop(path: str, n: int) -> tuple[float, float]:
    """(seconds per trigger() call, seconds per run including waiting for all of them)."""
    out: list[float] = []

    def body(eng: nbtasks.Engine, task: Any) -> float:
        t = time.perf_counter()
        handles = [task.trigger(i) for i in range(n)]
        out.append((time.perf_counter() - t) / n)
        eng.wait_results([h.id for h in handles], timeout=600)
        return (time.perf_counter() - t) / n

    whole = _with_engine(path, body)
    return out[0], whole


def batch_burst(path: str, n: int) -> tuple[float, float]:
    """(seconds for batch_trigger x500 + wait, longest engine-loop stall in seconds)."""
    stall: list[float] = []

    def body(eng: nbtasks.Engine, task: Any) -> float:
        ticker = _Ticker(eng.runtime.loop)
        t = time.perf_counter()
        batches = [task.batch_trigger(list(range(i, min(i + 500, n)))) for i in range(0, n, 500)]
        for b in batches:
            b.wait(timeout=600)
        took = time.perf_counter() - t
        stall.append(ticker.stop())
        return took

    took = _with_engine(path, body)
    return took, stall[0]


def async_burst(path: str, n: int) -> float:
    def body(eng: nbtasks.Engine, task: Any) -> float:
        async def go() -> None:
            handles = await asyncio.gather(*(task.trigger_async(i) for i in range(n)))
            await asyncio.gather(*handles)

        t = time.perf_counter()
        asyncio.run(go())
        return time.perf_counter() - t

    return _with_engine(path, body)


class _Ticker:
    """A 1 ms timer chain on the engine loop; the longest gap between ticks is the worst stall."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.worst = 0.0
        self.last = time.perf_counter()
        self.running = True
        loop.call_soon_threadsafe(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last - 0.001)
        self.last = now
        if self.running:
            self.loop.call_later(0.001, self._tick)

    def stop(self) -> float:
        self.running = False
        return self.worst


def fill(path: str, n: int) -> None:
    """A store holding `n` finished runs, written straight into the file (fast)."""
    nbtasks.Engine(store=path).close()  # the schema
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("BEGIN")
    now = time.time() - 86400
    con.executemany(
        "INSERT INTO runs (id, task_id, status, payload, output, attempt_count, created_at, "
        "updated_at, queued_at, queue, owner, seq) VALUES (?, 'old', 'COMPLETED', '1', 'null', 1, "
        "?, ?, ?, 'task/old', 'gone', ?)",
        ((f"run_{i:021d}", now + i * 1e-3, now + i * 1e-3, now + i * 1e-3, i)
         for i in range(n)))
    con.execute("COMMIT")
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loop", type=int, default=3000)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--big", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        names = iter(range(1000))

        def fresh() -> str:
            return os.path.join(tmp, f"runs-{next(names)}.db")

        row = min(bare_sqlite(fresh(), args.loop) for _ in range(3))
        call, whole = min(trigger_loop(fresh(), args.loop) for _ in range(2))
        print(f"bare sqlite3 one-row commit     {row * 1e6:8.1f} µs")
        print(f"trigger() call from a cell      {call * 1e6:8.1f} µs   ratio {call / row:5.2f}")
        print(f"trigger() loop + wait, per run  {whole * 1e6:8.1f} µs   ratio {whole / row:5.2f}")
        base = min(bare_asyncio(args.burst) for _ in range(3))
        batch, stall = min(batch_burst(fresh(), args.burst) for _ in range(2))
        gather = min(async_burst(fresh(), args.burst) for _ in range(2))
        print(f"bare asyncio x{args.burst}            {base:8.3f} s")
        print(f"batch_trigger x500 + wait       {batch:8.3f} s    ÷ asyncio {batch / base:5.2f}")
        print(f"trigger_async + gather          {gather:8.3f} s    ÷ batch   {gather / batch:5.2f}")
        print(f"longest loop stall in burst     {stall * 1e3:8.1f} ms")
        if args.big:
            big = fresh()
            fill(big, 1_000_000)
            full, _ = trigger_loop(big, args.loop)
            print(f"trigger() on 1,000,000 runs     {full * 1e6:8.1f} µs   ÷ empty {full / call:5.2f}")


if __name__ == "__main__":
    main()
