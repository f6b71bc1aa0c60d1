"""A warning when an async task body blocks the engine loop, naming the task.

An `async def` body that calls blocking code (`time.sleep`, a synchronous HTTP client, heavy CPU)
holds the engine's loop: no other run progresses, no trigger() returns. That is the most common
mistake in a notebook, and it looks like a hang. So every step of user code on the engine loop
(an async body's or hook's code between two awaits) is timed, and a step past the threshold is
logged on its run and once on the `nbtasks` logger, with the task's id.

Only time spent inside user code counts: not the engine's own work (a big burst to dispatch, a
slow commit callback), and not even the lifecycle code around a body, which on a busy machine
can lose the GIL or the CPU for a long moment through no fault of the body. The throughput
benchmark measures the engine's stalls with a probe on the loop. Timing costs two clock reads
per step and no timer at all.

A residual edge: if the process is starved (of CPU, or of the GIL by its other threads) while
it is inside a body's step, that step looks long. Bodies are short next to the engine's work
around them, so this is rare, and it can't be told apart from a body that blocked.
"""

from __future__ import annotations

import contextvars
import logging
import time
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import CURRENT

if TYPE_CHECKING:
    from ._context import AttemptScope
    from ._scheduler import Scheduler

log = logging.getLogger("nbtasks")

T = TypeVar("T")


class LoopWatch:
    """One per scheduler: the threshold (seconds; 0 turns the watch off) and a stall count."""

    def __init__(self, sched: Scheduler, threshold: float = 1.0) -> None:
        self.sched = sched
        self.threshold = threshold
        self.stalls = 0
        #: There is no timer any more (steps are timed where they run); kept None for callers
        #: that check the watch is idle.
        self._handle: Any = None

    def timed(self, coro: Coroutine[Any, Any, T], scope: AttemptScope) -> Awaitable[T]:
        """`coro` (user code on the engine loop), with every step timed against the threshold."""
        if self.threshold <= 0:
            return coro
        return timed_steps(coro, self, scope)

    def report(self, seconds: float, scope: AttemptScope) -> None:
        self.stalls += 1
        task_id, run_id = scope.ctx.task.id, scope.ctx.run.id
        message = (f"the engine loop was blocked for {seconds:.1f} s by the async body of task "
                   f"{task_id!r}: it calls blocking code (time.sleep, a synchronous client, "
                   "heavy CPU), which stalls every run; await instead, or make the body a plain "
                   "def (it then runs on a thread)")
        scope.sink.log("warn", message, {"blocked_seconds": round(seconds, 3)})
        # Outside the run's context: inside it, the logger's line would be captured into the
        # run's log a second time.
        contextvars.Context().run(log.warning, "%s (run %s)", message, run_id)

    def close(self) -> None:
        """Nothing to cancel; kept for the scheduler's shutdown."""


def user_code(coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """`coro`, a user's async body or hook, timed if it runs on an engine's loop."""
    scope = CURRENT.get()
    if scope is None:
        return coro
    # A worker process's scope holds a proxy with no scheduler: its loop is its own run's alone.
    sched = getattr(scope.engine, "scheduler", None)
    if sched is None:
        return coro
    watch: LoopWatch = sched.watch
    return coro if watch.threshold <= 0 else timed_steps(coro, watch, scope)


@types.coroutine
def timed_steps(coro: Coroutine[Any, Any, T], watch: LoopWatch,
                scope: AttemptScope) -> Generator[Any, Any, T]:
    """Drive a coroutine as a Task would, timing each `send`/`throw`: one step of user code.

    Futures the coroutine yields pass through to the Task untouched, and what the Task sends
    or throws back (results, CancelledError) is forwarded, so the coroutine can't tell. A
    generator-based coroutine: awaitable where a hook is awaited, and an attempt driven by its
    Task can `yield from` it, with no object between.
    """
    clock = time.perf_counter
    value: Any = None
    error: BaseException | None = None
    while True:
        start = clock()
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            seconds = clock() - start
            if seconds >= watch.threshold > 0:
                watch.report(seconds, scope)
            return stop.value  # type: ignore[no-any-return]
        except BaseException:
            seconds = clock() - start
            if seconds >= watch.threshold > 0:
                watch.report(seconds, scope)
            raise
        seconds = clock() - start
        if seconds >= watch.threshold > 0:
            watch.report(seconds, scope)
        try:
            value, error = (yield yielded), None
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # CancelledError and the like: into the coroutine
            value, error = None, exc
