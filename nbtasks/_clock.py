"""The injectable clock: every delay, TTL, retry back-off, wait and cron tick reads time from here.

The engine owns one clock. `RealClock` is wall time on the engine's event loop; `ManualClock` is
moved by tests (`clock.advance(30)`), so a one-hour delay is tested in microseconds.

>>> clock = ManualClock(start=datetime(2026, 1, 1, tzinfo=UTC))
>>> eng = Engine(store=":memory:", clock=clock)      # doctest: +SKIP
>>> clock.advance(3600)                              # fires every timer due in that hour
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


class TimerHandle(Protocol):
    """What `Clock.call_at` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time source of an engine. `call_at` is only called on the engine's loop."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` on the engine loop once `now() >= when`."""
        ...

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the engine loop that runs the callbacks."""
        ...


async def sleep_until(clock: Clock, when: float) -> None:
    """Sleep on the engine loop until the clock reaches `when` (a cancellable await)."""
    if clock.now() >= when:
        return
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _wake() -> None:
        if not fut.done():
            fut.set_result(None)

    handle = clock.call_at(when, _wake)
    try:
        await fut
    finally:
        handle.cancel()


def to_datetime(ts: float | None) -> datetime | None:
    """Epoch seconds to an aware UTC datetime (None stays None).

    A time past the year 9999 (a poisoned row) raises ValueError in our own words, the same
    on every Python: the interpreter's own text for it changed in 3.14."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{ts!r} seconds since 1970 is out of range for a date") from None


class RealClock:
    """Wall-clock time; timers are the loop's own `call_later`, so idle costs nothing."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = self._loop or asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.time()), callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: _ManualTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when told to. Thread-safe: tests call `advance()` from their thread.

    `advance(seconds)` fires every due timer in time order on the engine loop, with `now()` equal
    to each timer's own time while it runs, and returns once they have all run.
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        if start is None:
            start = datetime(2026, 1, 1, tzinfo=UTC)
        self._now = start.timestamp() if isinstance(start, datetime) else float(start)
        self._timers: list[_ManualTimer] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(when, next(self._seq), callback)
        with self._lock:
            heapq.heappush(self._timers, timer)
        if when <= self._now and self._loop is not None:
            # Already due (a zero delay): fire soon, as the real clock would, not at the next advance.
            self._loop.call_soon_threadsafe(self._fire_until, self._now)
        return timer

    def pending(self) -> int:
        """How many timers are waiting (cancelled ones excluded)."""
        with self._lock:
            return sum(1 for t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers on the engine loop; returns when they have run."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._run_on_loop(self._now + seconds)

    def set(self, when: datetime) -> None:
        """Move time to `when` (not backwards), firing due timers."""
        self._run_on_loop(max(self._now, when.timestamp()))

    def _run_on_loop(self, target: float) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            self._fire_until(target)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fire_until(target)
            return
        done = threading.Event()

        def _step() -> None:
            try:
                self._fire_until(target)
            finally:
                done.set()

        # Through the loop's mailbox, after whatever this thread handed the engine before (a
        # cell's triggers are handed over lazily): a run triggered and then timed by
        # `advance` is armed before the clock moves. Imported here: the run state imports
        # this module, and must not pull in the thread glue (and anyio) with it.
        from ._runtime import mailbox

        mailbox(loop).post(_step)
        done.wait()

    def _fire_until(self, target: float) -> None:
        while True:
            with self._lock:
                while self._timers and self._timers[0].cancelled:
                    heapq.heappop(self._timers)
                if not self._timers or self._timers[0].when > target:
                    break
                timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            timer.callback()
        self._now = max(self._now, target)
