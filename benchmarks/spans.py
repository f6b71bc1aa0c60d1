"""The cost of `logger.trace()` spans inside a task body, against `logger.info()` lines.

    python benchmarks/spans.py             # 20,000 of each, in one async task body
    python benchmarks/spans.py -n 5000

A span writes two log lines (opened, closed), so about twice a log line is the expected cost.
Each figure is the time per call measured inside the body (the engine's loop runs it), on a
real SQLite file. Nothing here is an assertion: it prints the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    n = args.n

    import nbtasks
    from nbtasks import Engine

    with tempfile.TemporaryDirectory() as tmp, Engine(store=os.path.join(tmp, "runs.db"),
                                                      loop_block_warning=0) as eng:
        @eng.task(id="cost")
        async def cost(kind: str, ctx: Any) -> float:
            t0 = time.perf_counter()
            if kind == "span":
                for i in range(n):
                    with nbtasks.logger.trace("step", i=i):
                        pass
            elif kind == "log":
                for i in range(n):
                    nbtasks.logger.info("step", i=i)
            return (time.perf_counter() - t0) / n * 1e6

        figures: dict[str, list[float]] = {"log": [], "span": []}
        for kind in ("log", "span", "log", "span"):
            figures[kind].append(cost.trigger(kind).wait(timeout=600).unwrap())
        log, span = min(figures["log"]), min(figures["span"])
        print(f"logger.info   {log:7.1f} us per line (baseline)")
        print(f"logger.trace  {span:7.1f} us per span  x{span / log:4.2f}")


if __name__ == "__main__":
    main()
