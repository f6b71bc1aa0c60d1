"""One throttled stream of engine events per engine, fanned out to every live widget.

The engine publishes a `RunEvent` on its loop thread for every change, thousands a second under
load. Widgets must not do their work there: a table query or a widget message on the engine loop
would slow every run. So the only thing the engine thread does here is put the event in a dict
(the latest event per run wins) and set a flag. One daemon thread per engine wakes on that flag,
waits out the throttle interval, lets pending writes land, and hands each listener the events it
asked for. When nothing happens the thread blocks on the flag: no polling, no timers.

>>> feed = feed_for(engine)                                        # doctest: +SKIP
>>> feed.add(listener)        # listener.update(events) runs on the feed thread, a few times a second
>>> feed.remove(listener)     # the last one out stops the thread and the subscription

Listeners return None to keep listening, a number of seconds to be called again that soon even
without events (a plot that throttles itself harder), or `DONE` to be removed. A listener whose
update raises is logged (once, until it succeeds again) and called again `retry` seconds later.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import threading
import time
import weakref
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from .._errors import EngineError
from .._runtime import forget_gone

if TYPE_CHECKING:
    from .._engine import Engine
    from .._events import RunEvent

log = logging.getLogger("nbtasks.notebook")

#: A listener's answer meaning "remove me" (its run ended, say).
DONE = -1.0

#: The default gap between two updates: at most four a second.
INTERVAL = 0.25
#: Seconds before a listener whose update raised is called again, events or not. Raising
#: never removes a listener: a widget that ticks only when it asks to (a clock) would
#: otherwise stop until its next event, and one that failed once (a query that met a locked
#: file) gets its chance to catch up.
RETRY = 1.0


class Listener(Protocol):
    """Something a feed keeps up to date."""

    @property
    def run_ids(self) -> Collection[str] | None:
        """Run ids it cares about, or None for every run."""
        ...

    def update(self, events: list[RunEvent]) -> float | None:
        """Called on the feed thread with this listener's new events (possibly none)."""
        ...


class _Pump:
    """One subscription and one thread; a stopped pump is never restarted (a new one is made)."""

    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed
        self.lock = threading.Lock()
        self.pending: dict[str, RunEvent] = {}
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.unsubscribe: Callable[[], None] | None = None
        self.poked: set[int] = set()  # id(listener)s to call at the next wake, events or not
        self.failing: set[int] = set()  # id(listener)s whose last update raised (logged once)
        self.thread = threading.Thread(target=self._run, name="nbtasks-dashboard", daemon=True)

    def start(self) -> None:
        self.unsubscribe = self.feed.engine.subscribe(self.push)
        self.thread.start()
        if self.stop.is_set():  # the last listener left while this was subscribing
            self.halt()

    def push(self, event: RunEvent) -> None:
        """Engine loop thread: O(1), never blocks on anything a widget holds."""
        with self.lock:
            self.pending[event.run_id] = event
        self.wake.set()

    def halt(self) -> None:
        self.stop.set()
        self.wake.set()
        unsubscribe, self.unsubscribe = self.unsubscribe, None
        if unsubscribe is not None:
            with contextlib.suppress(EngineError, RuntimeError):  # the engine closed first
                unsubscribe()

    def _run(self) -> None:
        due: dict[int, float] = {}  # id(listener) -> monotonic time it asked to be called again
        last = 0.0
        while not self.stop.is_set():
            timeout = max(0.0, min(due.values()) - time.monotonic()) if due else None
            self.wake.wait(timeout)
            if self.stop.is_set():
                return
            gap = last + self.feed.interval - time.monotonic()
            if gap > 0 and self.stop.wait(gap):
                return
            with self.lock:
                events, self.pending = list(self.pending.values()), {}
                poked, self.poked = self.poked, set()
                self.wake.clear()
            self.feed.settle()
            now = time.monotonic()
            for listener in self.feed.listeners():
                key = id(listener)
                ids = listener.run_ids
                mine = events if ids is None else [e for e in events if e.run_id in ids]
                if not mine and key not in poked and due.get(key, float("inf")) > now:
                    continue
                due.pop(key, None)
                again = self._call(listener, mine)
                if again == DONE:
                    self.feed.remove(listener)
                elif again is not None:
                    due[key] = now + again
            live = {id(x) for x in self.feed.listeners()}
            due = {k: v for k, v in due.items() if k in live}
            self.failing &= live
            last = time.monotonic()

    def _call(self, listener: Listener, events: list[RunEvent]) -> float | None:
        """`listener.update(events)`; a broken widget must not stop the others' updates, nor
        its own: it is called again `retry` seconds later."""
        key = id(listener)
        try:
            again = listener.update(events)
        except Exception:
            if key not in self.failing:
                self.failing.add(key)
                log.exception("nbtasks: a live widget failed to update (tried again every "
                              "%gs; logged once until it succeeds)", self.feed.retry)
            return self.feed.retry
        self.failing.discard(key)
        return again


class LiveFeed:
    """The shared event stream of one engine (see the module docstring)."""

    def __init__(self, engine: Engine, interval: float = INTERVAL, retry: float = RETRY) -> None:
        self.engine = engine
        self.interval = interval
        self.retry = retry
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._pump: _Pump | None = None

    def listeners(self) -> list[Listener]:
        with self._lock:
            return list(self._listeners)

    def add(self, listener: Listener) -> None:
        """Start delivering to `listener`; register before reading state, so nothing is missed."""
        with self._lock:
            self._listeners.append(listener)
            if self._pump is not None:
                return
            pump = self._pump = _Pump(self)
        pump.start()

    def remove(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if self._listeners or self._pump is None:
                return
            pump, self._pump = self._pump, None
        pump.halt()

    def settle(self) -> None:
        """Let writes marked before now reach the store, so reads agree with the events."""
        eng = self.engine
        if eng.closed:
            return
        with contextlib.suppress(EngineError, RuntimeError):
            eng.runs._fresh()

    def poke(self, listener: Listener) -> None:
        """Call `listener.update([])` soon, on the feed thread (it became visible, say)."""
        with self._lock:
            pump = self._pump
        if pump is not None:
            with pump.lock:
                pump.poked.add(id(listener))
            pump.wake.set()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._pump is not None


_feeds: weakref.WeakKeyDictionary[Engine, LiveFeed] = weakref.WeakKeyDictionary()
_engine_closed: Callable[[Engine], bool] = operator.attrgetter("closed")
_feeds_lock = threading.Lock()


def feed_for(engine: Engine) -> LiveFeed:
    """The engine's feed, made on first use: all widgets of one engine share one thread."""
    with _feeds_lock:
        feed = _feeds.get(engine)
        if feed is None:
            forget_gone(_feeds, _engine_closed)  # a feed holds its engine: see forget_gone
            feed = _feeds[engine] = LiveFeed(engine)
        return feed
