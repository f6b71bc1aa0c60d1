"""The `kernel` machine: async bodies on the engine loop, sync bodies on daemon threads.

Sync bodies run on daemon threads of our own rather than the loop's default executor: a sync
body that ignores `ctx.signal` after a cancel must not keep the interpreter from exiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

from .. import _parking
from .._context import CURRENT, AttemptScope
from .._lifecycle import AttemptOutcome, AttemptPlan, run_attempt
from .._runtime import mailbox
from .._tasks import TaskDefinition

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...],
             contextvars.Context]


class DaemonThreads:
    """A growing pool of daemon threads; `run()` awaits a sync call without blocking the loop.

    Cancelling the awaiting task abandons the call: the thread finishes it and the result is
    dropped, which is what a cancelled or timed-out sync run needs.

    `max_threads` caps the threads running user code, not the threads alive: a thread parked
    in a wait for another run (nbtasks._parking) doesn't count, so a sync body waiting on a
    sync child never starves that child of a thread, at any depth. Threads the pool grew for
    such waits retire once they are over.
    """

    def __init__(self, max_threads: int = 64, name: str = "nbtasks-sync") -> None:
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._names = itertools.count()
        self.alive = 0     # threads started and not retired
        self._idle = 0     # of those, waiting for a job
        self._pending = 0  # jobs put and not yet taken
        self.parked = 0    # threads blocked in a wait for another run

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._pending += 1
            self._grow()
        self._jobs.put((loop, fut, fn, args, contextvars.copy_context()))
        return await fut

    def _grow(self) -> None:
        """Under the lock: a thread more if a job would wait and the cap allows it."""
        if self._pending > self._idle and self.alive - self.parked < self.max_threads:
            self.alive += 1
            self._idle += 1
            threading.Thread(target=self._work, name=f"{self.name}-{next(self._names)}",
                             daemon=True).start()

    def park(self) -> None:
        with self._lock:
            self.parked += 1
            self._grow()

    def unpark(self) -> None:
        with self._lock:
            self.parked -= 1

    def _work(self) -> None:
        _parking.bind(self)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._idle -= 1
                self._pending -= 1
            loop, fut, fn, args, ctx = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = ctx.run(fn, *args)
            except BaseException as exc:
                error = exc
            # Counted before the run's end is handed on: whoever hears of it may look at
            # `alive` at once, and must not see a thread that is only about to retire.
            with self._lock:
                retire = self.alive - self.parked > self.max_threads
                if retire:
                    self.alive -= 1  # grown for waits that are over: back under the cap
                else:
                    self._idle += 1
            self._settle(loop, fut, result, error, ctx)
            # an idle thread must not keep the last run alive
            del job, fn, args, ctx, result, error
            if retire:
                return

    @staticmethod
    def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any,
                exc: BaseException | None, ctx: contextvars.Context) -> None:
        def _set() -> None:
            if fut.done():
                if fut.cancelled():  # abandoned: the run already ended (cancel / max_duration)
                    ctx.run(_note_late_result)
                return
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)

        # Through the engine's mailbox, after whatever this thread handed it before: a child
        # the body triggered just before returning is armed before its parent ends. A loop
        # already gone (interpreter exit) drops it.
        mailbox(loop).post(_set)

    def close(self) -> None:
        for _ in range(self.alive):
            self._jobs.put(None)


def _note_late_result() -> None:
    """Record on the run that a sync call it abandoned has now returned, and was dropped."""
    scope = CURRENT.get()
    if scope is not None:
        scope.sink.log("warn", "late result discarded: the run had already ended", None)


class InlineExecutor:
    """Runs attempts inside the kernel process. Starts in microseconds; sees notebook state."""

    name = "kernel"

    def __init__(self, max_threads: int = 64) -> None:
        self.threads = DaemonThreads(max_threads)

    async def start(self) -> None:
        return None

    async def execute(self, plan: AttemptPlan, scope: AttemptScope) -> AttemptOutcome:
        return await run_attempt(plan, scope, self.threads.run)

    async def close(self) -> None:
        self.threads.close()


class InlineSync:
    """Sync task code on the worker's main thread: no thread hop per call.

    One attempt owns the process, so blocking the loop costs nothing, and a request made from
    here reads its own reply (`PipeChannel.wait`). The running loop is hidden meanwhile, so the
    code behaves as in a thread: `asyncio.run()` works, and blocking waits are allowed. A sync
    middleware is the exception: its `next()` needs the loop, so it runs on a thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: DaemonThreads) -> None:
        self.loop = loop
        self.threads = threads
        self.middleware: Any = None

    def bind(self, defn: TaskDefinition) -> InlineSync:
        """For one attempt of `defn` (the next one replaces it: one attempt at a time)."""
        self.middleware = defn.hooks.get("middleware")
        return self

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if fn is self.middleware:
            return await self.threads.run(fn, *args)
        asyncio.events._set_running_loop(None)
        try:
            return contextvars.copy_context().run(fn, *args)
        finally:
            asyncio.events._set_running_loop(self.loop)
