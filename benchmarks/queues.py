"""Queue benchmarks, each printed next to its baseline from the same run.

    python benchmarks/queues.py

1. 2,000 runs that each sleep 10 ms on a queue with concurrency_limit=100: the ideal is
   2,000 / 100 x 10 ms = 0.2 s. Bare asyncio with a Semaphore(100) is measured alongside,
   interleaved with it; the target is nbtasks <= 1.2x bare. The CPU each run cost (all
   threads, and the engine loop's thread alone) is printed beside it.
2. 10,000 no-op runs spread over 100 concurrency keys with limit 1 each, against the same 10,000
   runs on a queue with limit 100 and no keys.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

import nbtasks


def bare_sleepers(n: int, limit: int, seconds: float) -> float:
    async def main() -> None:
        sem = asyncio.Semaphore(limit)

        async def one() -> None:
            async with sem:
                await asyncio.sleep(seconds)

        await asyncio.gather(*(one() for _ in range(n)))

    t = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t


def _timed_batches(task: nbtasks.Task[Any, Any], items: list[Any], **options: Any) -> float:
    t = time.perf_counter()
    batches = [task.batch_trigger(items[i:i + 500], **options) for i in range(0, len(items), 500)]
    for b in batches:
        assert all(r.ok for r in b.wait(timeout=600))
    return time.perf_counter() - t


def nb_sleepers(path: str, n: int, limit: int, seconds: float) -> tuple[float, float, float]:
    """(seconds, process CPU µs per run, engine-loop thread CPU µs per run).

    The CPU figures say where the time goes: every thread's Python work shares one GIL, so
    the runs' bookkeeping has to fit between the sleeps for the wall time to approach bare
    asyncio's."""
    with nbtasks.Engine(store=path, concurrency_limit=1000) as eng:
        @eng.task(id="sleeper", queue={"concurrency_limit": limit})
        async def sleeper(payload: int, ctx: Any) -> None:
            await asyncio.sleep(seconds)

        loop_clock = time.pthread_getcpuclockid(eng.runtime.thread_id)
        cpu, loop_cpu = time.process_time(), time.clock_gettime(loop_clock)
        wall = _timed_batches(sleeper, list(range(n)))
        return (wall, (time.process_time() - cpu) / n * 1e6,
                (time.clock_gettime(loop_clock) - loop_cpu) / n * 1e6)


def nb_keys(path: str, n: int, keys: int) -> tuple[float, float]:
    """(seconds with `keys` concurrency keys of limit 1, seconds with no keys and limit `keys`)."""
    with nbtasks.Engine(store=path, concurrency_limit=1000) as eng:
        @eng.task(id="keyed", queue={"concurrency_limit": 1})
        async def keyed(payload: int, ctx: Any) -> None:
            return None

        @eng.task(id="plain", queue={"concurrency_limit": keys})
        async def plain(payload: int, ctx: Any) -> None:
            return None

        items = [nbtasks.BatchItem(i, concurrency_key=f"user-{i % keys}") for i in range(n)]
        with_keys = _timed_batches(keyed, items)
        without = _timed_batches(plain, list(range(n)))
        q = eng.queues.retrieve("task/keyed")
        assert q["peak_per_key"] == 1, q
        return with_keys, without


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        n, limit, sleep = 2000, 100, 0.010
        ideal = n / limit * sleep
        bares, nbs = [], []
        for i in range(3):  # interleaved, best of 3 each: a busy moment hits both alike
            bares.append(bare_sleepers(n, limit, sleep))
            nbs.append(nb_sleepers(os.path.join(tmp, f"a{i}.db"), n, limit, sleep))
        bare = min(bares)
        nb, cpu, loop_cpu = min(nbs)
        print(f"{n} runs sleeping {sleep * 1000:.0f} ms, queue limit {limit} (ideal {ideal:.2f} s;"
              " best of 3)")
        print(f"  bare asyncio + Semaphore  {bare:6.3f} s  {bare / ideal:5.2f}x ideal")
        print(f"  nbtasks                   {nb:6.3f} s  {nb / ideal:5.2f}x ideal"
              f"  ({nb / bare:4.2f}x bare asyncio)")
        print(f"  nbtasks CPU per run (that best round)  {cpu:5.0f} µs, of which the engine"
              f" loop's thread {loop_cpu:4.0f} µs")
        keyed, plain = nb_keys(os.path.join(tmp, "b.db"), 10_000, 100)
        print("10,000 no-op runs")
        print(f"  100 concurrency keys, limit 1 each  {keyed:6.3f} s")
        print(f"  no keys, queue limit 100            {plain:6.3f} s")
        print(f"  ratio                               {keyed / plain:6.2f}")


if __name__ == "__main__":
    main()
