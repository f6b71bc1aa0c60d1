"""A thread that blocks in a wait tells the pool it came from, so the pool can grow for it.

Sync task bodies run on a bounded pool of threads. A body that waits for a child run
(`handle.wait()`, `wait.for_sync`, a token, `asyncio.run(task.trigger_and_wait(...))`) holds
its thread while the child needs one: with every thread so parked, the children never start.
So a wait marks its thread parked for its duration, and parked threads don't count against the
pool's cap. The cap then bounds threads *running* user code, and waits nest to any depth.

The pool registers itself per thread; code anywhere below can say "I block now" without
knowing which pool, or whether there is one (a notebook's main thread has none).
"""

from __future__ import annotations

import threading
from typing import Protocol


class Parkable(Protocol):
    def park(self) -> None:
        """The calling thread, one of the pool's, blocks in a wait from now on."""

    def unpark(self) -> None:
        """The calling thread runs user code again."""


_local = threading.local()


def bind(pool: Parkable) -> None:
    """Called by a pool's thread once, before it runs any job."""
    _local.pool = pool


class parked:  # lower case: it reads as a function, `with parked():`
    """Around a blocking wait: the pool may start another thread while this one waits.

    A class rather than a generator: `trigger_async` and `await handle` pass through here on
    every call, from threads that mostly have no pool at all.
    """

    __slots__ = ("_pool",)

    def __enter__(self) -> None:
        pool: Parkable | None = getattr(_local, "pool", None)
        self._pool = pool
        if pool is not None:
            pool.park()

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.unpark()
