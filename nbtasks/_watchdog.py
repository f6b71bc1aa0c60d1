"""A warning when something blocks the engine loop.

An `async def` body that calls blocking code (`time.sleep`, a synchronous HTTP client, heavy CPU)
holds the engine's loop: no other run progresses, no trigger() returns. That is the most common
mistake in a notebook, and it looks like a hang. While runs execute, a timer checks how late the
loop wakes it; a stall past the threshold is logged on the kernel runs that executed since the
last check and once on the `nbtasks` logger. When nothing runs there is no timer at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ._events import attributes_json
from ._status import RunStatus

if TYPE_CHECKING:
    from ._runstate import RunState
    from ._scheduler import Scheduler

log = logging.getLogger("nbtasks")


class LoopWatch:
    """Armed by the scheduler whenever an attempt starts; disarms itself when all is idle."""

    def __init__(self, sched: Scheduler, threshold: float = 1.0) -> None:
        self.sched = sched
        self.threshold = threshold
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.stalls = 0
        #: Ids of the runs started since the last check: the stall happened in one of them,
        #: and it may well have finished by the time the loop is free to notice. Ids, not runs:
        #: a finished run must not stay in memory for the watch's sake.
        self._seen: list[str] = []

    def arm(self, run: RunState | None = None) -> None:
        if run is not None and (run.machine or "kernel") == "kernel" and self.threshold > 0:
            self._seen.append(run.id)
        if self._handle is None and self.threshold > 0:
            loop = self.sched.loop
            self._due = loop.time() + min(0.25, self.threshold / 2)
            self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = self.sched.loop
        lag = loop.time() - self._due
        self._handle = None
        seen, self._seen = self._seen, []
        active = self.sched.active
        executing = [i for i in seen if (r := active.get(i)) is not None
                     and r.status is RunStatus.EXECUTING]
        if lag >= self.threshold:
            self._report(lag, seen)
        self._seen = executing
        if self.sched.dispatcher.running:
            self.arm()

    def _report(self, lag: float, seen: list[str]) -> None:
        self.stalls += 1
        message = (f"the engine loop was blocked for {lag:.1f} s: an async task body that calls "
                   "blocking code (time.sleep, a synchronous client, heavy CPU) stalls every "
                   "run; await instead, or make the body a plain def (it then runs on a thread)")
        blamed = list(dict.fromkeys(seen))
        attrs = {"blocked_seconds": round(lag, 3)}
        for run_id in blamed:
            run = self.sched.active.get(run_id)
            if run is not None:
                self.sched.log(run, "warn", message, attrs)
            else:  # finished meanwhile: its log still gets the line
                self.sched.writer.log((run_id, self.sched.clock.now(), "warn", message,
                                       attributes_json(attrs)))
        log.warning("%s (runs executing: %s)", message, ", ".join(blamed[:5]) or "none")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
