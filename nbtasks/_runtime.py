"""The engine thread and the bridge for callers on other threads: the only loop/thread glue.

The engine loop runs on a daemon thread (anyio's blocking portal), so runs progress while a cell
computes and the kernel stays free to handle widget clicks. Sync callers block on a future; async
callers on any other loop await a wrapped future; code already on the engine loop runs directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import operator
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._errors import EngineError
from ._parking import parked

T = TypeVar("T")

#: Seconds of loop time one turn of the loop gives the engine's own sliced work (see LoopTurn).
SLICE = 0.004
#: Seconds a mailbox gathers lazy posts after running some (see Mailbox.post_lazy).
LINGER = 0.001
#: Lazy posts gathered per LINGER of a linger's length that make a stream (4 a millisecond:
#: a `trigger()` loop makes 10-15): the next linger is twice as long, up to LINGER_MAX seconds,
#: until a linger gathers fewer.
STREAM = 4
LINGER_MAX = 0.1


class LoopTurn:
    """One loop turn's share of the engine's own work, drawn on by every slicer on the loop:
    the mailbox's drain, the writer's row building and its after-commit work.

    Bounded to SLICE each, they still added up: asyncio runs every callback that is ready
    when a turn starts before it looks at its timers again, and a drain, a slice of rows and
    a slice of after-commit work ready together held the loop for three slices (a 20,000-run
    burst's longest stalls). Now the first slicer of a turn starts the clock and the others
    share its deadline; one that finds it passed takes one step and leaves the rest for the
    next turn, so each still makes progress every turn.
    """

    __slots__ = ("_deadline", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._deadline = 0.0

    def deadline(self) -> float:
        """`time.perf_counter()` past which a slicer stops for this turn (on the loop only)."""
        if not self._deadline:
            self._deadline = time.perf_counter() + SLICE
            # Runs first in the next turn, before the slices this one puts off (queued after it).
            self._loop.call_soon(self._next)
        return self._deadline

    def _next(self) -> None:
        self._deadline = 0.0


class Mailbox:
    """Calls posted from any thread, run on one loop with one wake-up per burst.

    `loop.call_soon_threadsafe` writes to the loop's self-pipe on every call; a burst of
    thousands of triggers or awaits from a cell would wake the engine thousands of times.

    `post_lazy` is for work that may wait a little (a run handed over by a cell's
    `trigger()`): after a drain that ran some, the mailbox lingers for LINGER seconds, and
    lazy posts meanwhile wake nobody; they run together when it ends. A `trigger()` loop
    then wakes the engine about once per LINGER instead of once per run, and the engine
    starts those runs together. A plain `post` still wakes the loop at once, and runs after
    everything posted before it, lazy or not: a wait or a cancel finds its run handed over.

    While the posts keep coming (STREAM or more per LINGER of the linger) each linger is twice
    the last, up to LINGER_MAX. The engine thread and the cell share the GIL: every drain the engine
    makes while the cell is still triggering takes the GIL from it, and fewer, bigger drains
    cost both less in all (each drain pays for its loop turn, its GIL hand-offs and its
    write batch once). A run of a stream starts at most LINGER_MAX after its `trigger()`
    returned; a lone `trigger()`, or the first of a stream, still within LINGER.
    """

    #: Seconds of the linger, and of the longest a stream stretches it to.
    linger = LINGER
    linger_max = LINGER_MAX

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: This loop's turn budget, shared with the other slicers on it (see LoopTurn).
        self.turn = LoopTurn(loop)
        self._items: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._armed = False  # a drain is due: nobody needs to wake the loop
        self._lingering = False  # a drain at the end of a linger is due: lazy posts wait for it
        self._lazy = False  # the items hold a lazy post
        self._gathered = 0  # lazy posts since the last linger began
        self._span = 0.0  # seconds of the last linger

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._items.append((fn, args))
            if self._armed:
                return
            self._armed = True
        self._wake()

    def post_lazy(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._items.append((fn, args))
            self._lazy = True
            self._gathered += 1
            if self._armed or self._lingering:
                return
            self._armed = True
        self._wake()

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # that loop is closed: nobody is left to tell
            with self._lock:
                self._items.clear()
                self._armed = False

    def _linger_end(self) -> None:
        with self._lock:
            self._lingering = False
            if not self._items:
                self._span = 0.0  # nothing came: a stream is over
            if self._armed or not self._items:
                return
            self._armed = True
        self._drain()

    def streaming(self) -> bool:
        """True while lazy posts come in a stream: the linger has doubled three times, so the
        posts kept coming for seven lingers' time. A batch burst's posts sometimes stretch one
        linger once; that is no reason for the writer to put its commits off (`STREAM_GAP`)."""
        return self._span >= 8 * self.linger

    def _next_span(self) -> float:
        """The next linger's seconds: twice the last in a stream, else `linger`."""
        if self._gathered < STREAM * max(self._span, self.linger) / self.linger:
            return self.linger
        return max(self.linger, min(self._span * 2, self.linger_max))

    def _drain(self) -> None:
        """Run what was posted, in order, in slices: a burst of 20,000 posts must not hold the
        loop (timers, widgets and every run wait behind it). What a slice leaves goes back in
        front of anything posted meanwhile."""
        with self._lock:
            items, self._items = self._items, []
            self._armed = False
            if self._lazy and not self._lingering:
                self._lingering = True
                self._span = self._next_span()
                self._gathered = 0
                self.loop.call_later(self._span, self._linger_end)
            self._lazy = False
        deadline = self.turn.deadline()
        for i, (fn, args) in enumerate(items):
            fn(*args)
            if i + 1 < len(items) and time.perf_counter() > deadline:
                with self._lock:
                    self._items[:0] = items[i + 1:]
                    if self._armed:
                        return
                    self._armed = True
                self.loop.call_soon(self._drain)
                return


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = (
    weakref.WeakKeyDictionary())
_mailboxes_lock = threading.Lock()


def mailbox(loop: asyncio.AbstractEventLoop) -> Mailbox:
    with _mailboxes_lock:
        box = _mailboxes.get(loop)
        if box is None:
            forget_gone(_mailboxes, LOOP_CLOSED)
            box = _mailboxes[loop] = Mailbox(loop)
        return box


K = TypeVar("K")
#: `gone` for a map keyed by loops: a closed loop runs nothing again.
LOOP_CLOSED: Callable[[asyncio.AbstractEventLoop], bool] = operator.methodcaller("is_closed")


def forget_gone(per_key: weakref.WeakKeyDictionary[K, Any], gone: Callable[[K], bool]) -> None:
    """Drop the entries whose key is `gone` (a closed loop, a closed engine). What such a weak
    map keeps per key (a mailbox, a group commit, a live feed) holds its key, so the weak key
    never dies by itself: every `asyncio.run()` in a notebook that triggered or awaited a
    run, and every closed engine that had a widget, would stay in memory for the kernel's
    life. Callers sweep when they make a new entry, so at most one gone key's entry waits
    for the next."""
    for key in [key for key in per_key if gone(key)]:
        per_key.pop(key, None)  # another thread may have swept it first


def to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """`fn(*args)` on `loop` from another thread; dropped if that loop has closed meanwhile
    (nobody is left to tell)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _transfer(task: asyncio.Future[T], fut: asyncio.Future[T] | concurrent.futures.Future[T]) -> None:
    """Copy an engine-loop task's outcome onto the caller's future (asyncio or concurrent)."""
    if fut.done():
        return
    if task.cancelled():
        # A concurrent future is RUNNING by now and refuses cancel(): its waiter would block
        # for ever, so it gets the CancelledError as its outcome instead.
        if not fut.cancel():
            fut.set_exception(concurrent.futures.CancelledError())
    elif (exc := task.exception()) is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(task.result())


class Runtime:
    """One event loop on one daemon thread, plus ways in from everywhere else."""

    def __init__(self, name: str = "nbtasks-engine") -> None:
        self._cm = start_blocking_portal(name=name)
        self.portal: BlockingPortal = self._cm.__enter__()
        self.loop: asyncio.AbstractEventLoop = self.portal.call(_running_loop)
        self.thread_id: int = self.portal.call(threading.get_ident)
        self.inbox = mailbox(self.loop)
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
        # Only posts: unlike a portal call it never waits for the loop thread to pick the task
        # up, so thousands of concurrent callers cost no round trips.
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()

        def _start() -> None:
            # The future stays PENDING rather than RUNNING: a RUNNING one refuses cancel(), and
            # the caller's cancel (handle.wait(timeout) running out) must reach the task.
            if cf.cancelled():
                return
            task = self._begin(fn, args)
            task.add_done_callback(lambda t: _transfer(t, cf))
            cf.add_done_callback(lambda f: f.cancelled() and self.loop.call_soon_threadsafe(
                task.cancel))

        self.inbox.post(_start)
        return cf

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `fn(*args)` on the engine loop from any loop (directly when already there).

        `fn` may be a coroutine function, or a plain function that returns a future: the
        latter skips a task per call, which matters when a cell awaits thousands of handles.
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None:
            raise EngineError("Runtime.run must be awaited inside an event loop")
        if running is self.loop:
            return await fn(*args)
        if self.closed:
            raise EngineError("the engine is closed")
        fut: asyncio.Future[T] = running.create_future()
        back = mailbox(running)
        started: list[asyncio.Future[T]] = []

        def _start() -> None:
            if fut.done():  # the caller gave up before the engine got to it
                return
            done = self._begin(fn, args)
            started.append(done)
            done.add_done_callback(lambda t: back.post(_transfer, t, fut))

        self.inbox.post(_start)
        try:
            # A sync body awaiting on a loop of its own (asyncio.run) blocks its pool thread.
            with parked():
                return await fut
        except asyncio.CancelledError:
            self.inbox.post(_cancel_all, started)
            raise

    def _begin(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> asyncio.Future[T]:
        """On the loop: start `fn(*args)`. A returned future is used as it is (no task); a
        coroutine gets a task. An error raised by the call itself lands in the future, so one
        failing call never stops the mailbox from running the others posted with it."""
        try:
            res = fn(*args)
        except BaseException as exc:
            failed: asyncio.Future[T] = self.loop.create_future()
            failed.set_exception(exc)
            return failed
        return res if asyncio.isfuture(res) else self.loop.create_task(_awaited(res))

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


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


def _cancel_all(tasks: list[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
