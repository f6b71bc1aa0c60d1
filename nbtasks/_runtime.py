"""The engine thread and the bridge for callers on other threads: the only loop/thread glue.

The engine loop runs on a daemon thread (anyio's blocking portal), so runs progress while a cell
computes and the kernel stays free to handle widget clicks. Sync callers block on a future; async
callers on any other loop await a wrapped future; code already on the engine loop runs directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._errors import EngineError

T = TypeVar("T")


class Runtime:
    """One event loop on one daemon thread, plus ways in from everywhere else."""

    def __init__(self, name: str = "nbtasks-engine") -> None:
        self._cm = start_blocking_portal(name=name)
        self.portal: BlockingPortal = self._cm.__enter__()
        self.loop: asyncio.AbstractEventLoop = self.portal.call(_running_loop)
        self.thread_id: int = self.portal.call(threading.get_ident)
        self.closed = False

    def in_loop(self) -> bool:
        return threading.get_ident() == self.thread_id

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` on the engine loop and block for its result (sync callers only)."""
        if self.in_loop():
            raise EngineError(
                "a blocking nbtasks call was made on the engine's own loop (inside an async task "
                "body or hook); use the async form instead, e.g. `await handle` or "
                "`await task.trigger_and_wait(...)`"
            )
        return self.submit(fn, *args).result()

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> concurrent.futures.Future[T]:
        """Start `fn(*args)` on the engine loop; a concurrent future for its result."""
        if self.closed:
            raise EngineError("the engine is closed")
        # run_coroutine_threadsafe only schedules: unlike a portal call it never waits for the
        # loop thread to pick the task up, so thousands of concurrent callers cost no round trips.
        return asyncio.run_coroutine_threadsafe(_as_coroutine(fn, *args), self.loop)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `fn(*args)` on the engine loop from any loop (directly when already there)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return await fn(*args)
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop; never blocks longer than `timeout` (a stuck body must not hang exit)."""
        if self.closed:
            return
        self.closed = True
        stopper = threading.Thread(
            target=self._cm.__exit__, args=(None, None, None), daemon=True,
            name="nbtasks-engine-stop",
        )
        stopper.start()
        stopper.join(timeout)


async def _as_coroutine(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await fn(*args)


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
