"""Throughput: N no-op runs triggered then awaited, on nbtasks (real SQLite) and on bare asyncio.

    python benchmarks/throughput.py            # N = 20,000
    python benchmarks/throughput.py -n 5000

Prints runs/s, µs/run and the ratio to bare asyncio measured in the same process, for three ways
a notebook triggers work: `batch_trigger` in chunks of 500, concurrent `trigger_async` from a
coroutine, and a plain `trigger()` loop from a cell (each call waits for its commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable

import nbtasks


async def _bare(n: int) -> None:
    async def noop(i: int) -> None:
        return None

    await asyncio.gather(*(asyncio.create_task(noop(i)) for i in range(n)))


def bare_asyncio(n: int) -> float:
    t = time.perf_counter()
    asyncio.run(_bare(n))
    return time.perf_counter() - t


def _engine(path: str) -> tuple[nbtasks.Engine, nbtasks.Task[int, None]]:
    eng = nbtasks.Engine(store=path, concurrency_limit=1000)

    async def noop(payload: int, ctx: object) -> None:
        return None

    return eng, eng.task(id="noop", run=noop)


def _timed(path: str, body: Callable[[nbtasks.Task[int, None]], None]) -> float:
    """Seconds `body(task)` takes on a fresh engine (start-up and shutdown not counted)."""
    eng, task = _engine(path)
    try:
        t = time.perf_counter()
        body(task)
        return time.perf_counter() - t
    finally:
        eng.close()


def nb_batch(n: int, path: str) -> float:
    def body(task: nbtasks.Task[int, None]) -> None:
        batches = [task.batch_trigger(list(range(i, min(i + 500, n)))) for i in range(0, n, 500)]
        for b in batches:
            assert all(r.ok for r in b.wait())

    return _timed(path, body)


def nb_async(n: int, path: str) -> float:
    def body(task: nbtasks.Task[int, None]) -> None:
        async def go() -> None:
            handles = await asyncio.gather(*(task.trigger_async(i) for i in range(n)))
            results = await asyncio.gather(*handles)
            assert all(r.ok for r in results)

        asyncio.run(go())

    return _timed(path, body)


def nb_loop(n: int, path: str) -> float:
    def body(task: nbtasks.Task[int, None]) -> None:
        handles = [task.trigger(i) for i in range(n)]
        for h in handles:
            assert h.wait().ok

    return _timed(path, body)


def _best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1000))

        def fresh() -> str:
            return os.path.join(tmp, f"runs-{next(counter)}.db")

        base = _best(lambda: bare_asyncio(n), args.repeat)
        rows = [("bare asyncio (create_task + gather)", base)]
        rows.append(("nbtasks batch_trigger x500 + wait", _best(lambda: nb_batch(n, fresh()),
                                                                  args.repeat)))
        rows.append(("nbtasks trigger_async + gather", _best(lambda: nb_async(n, fresh()),
                                                               args.repeat)))
        loop_n = min(n, 2000)
        loop = _best(lambda: nb_loop(loop_n, fresh()), 1) * n / loop_n
        rows.append((f"nbtasks trigger() loop (n={loop_n}, scaled)", loop))
    print(f"N = {n} no-op runs, SQLite store on disk, best of {args.repeat}")
    print(f"{'mode':44} {'runs/s':>10} {'µs/run':>8} {'ratio':>7}")
    for name, secs in rows:
        print(f"{name:44} {n / secs:10,.0f} {secs / n * 1e6:8.1f} {secs / base:7.1f}")


if __name__ == "__main__":
    main()
