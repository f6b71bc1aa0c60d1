"""Timeline and run-trace reads on a big history: kernel time to build what the widgets draw.

    python benchmarks/timeline.py              # 100,000 runs over the last ~2 hours
    python benchmarks/timeline.py -n 20000 --repeat 3

The store is filled as benchmarks/dashboard.py fills it. Figures are medians of `--repeat`
tries, printed as ratios against a baseline measured in the same run: the old timeline query
(the newest 2,000 runs of the window, one SELECT). Nothing here is an assertion.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dashboard import fill_store


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from nbtasks.notebook import queries
    from nbtasks.notebook.timeline_model import build_timeline
    from nbtasks.notebook.trace_model import build_trace
    from nbtasks.stores import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "runs.db")
        fill_store(path, args.n)
        store = SQLiteStore(path)
        store.open()
        try:
            now = time.time()
            run_id = store.select("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1")[1][0][0]
            base = _median_ms(lambda: queries.spans(store, now - 3600), args.repeat)
            print(f"{args.n:,} runs; baseline (newest 2,000 of the last hour, one SELECT): "
                  f"{base:.1f} ms")
            for label, window in (("last 5 minutes", 300), ("last hour", 3600),
                                  ("last day", 86400)):
                ms = _median_ms(lambda w=window: build_timeline(store, now, w), args.repeat)
                data = build_timeline(store, now, window)
                print(f"  timeline {label:15} {ms:8.1f} ms  x{ms / base:5.2f}  "
                      f"({len(data['bars'])} bars, {data['summarised']} runs summarised)")
            ms = _median_ms(lambda: build_trace(store, run_id, now), args.repeat)
            print(f"  one run's trace         {ms:8.1f} ms  x{ms / base:5.2f}")
        finally:
            store.close()


if __name__ == "__main__":
    main()
