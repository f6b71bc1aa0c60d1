"""Warm worker processes, seen from the kernel: one `Worker` each, a `Pool` per preset.

Workers come from multiprocessing's *forkserver*: the engine has threads, and forking a threaded
process is unsafe, while the fork server is a clean single-threaded process that has already
imported nbtasks, so a new worker is ready in milliseconds instead of a fresh interpreter's
second. Messages and deaths are watched with the engine loop's readers (the pipe, and the
process sentinel): no thread per worker, no polling.

Memory is held by `MemoryWatcher`. We measure each busy worker's resident set from a kernel
thread (one read of its /proc statm on Linux, psutil elsewhere), and kill the worker as soon
as it passes its preset's RAM, which is what a cgroup's OOM killer would do. We chose this
over the alternatives:
- RLIMIT_AS caps address space, not memory: Python, BLAS and thread stacks reserve far more
  than they touch, so a 256 MB cap breaks `import numpy`, and a hit is a MemoryError that
  user code may swallow;
- cgroups need privileges or a systemd delegation that a notebook rarely has.
The check runs outside the worker, so a run stuck in C code holding the GIL is still stopped.
Between two samples (20 ms) a run can overshoot; the worker also reports its peak RSS
(ru_maxrss) with each result, so a run that went over and finished between samples fails
too.

What a worker says travels as JSON (one frame per message, multiprocessing's 4-byte length
then the UTF-8 text): nothing read from a worker's pipe is unpickled in the kernel, so even a
run that took over its worker can't run code here. What the kernel sends down is pickled (the
task's functions have to be).

Look-ahead: while runs wait for a worker, each busy worker gets up to `LOOKAHEAD` attempts queued
behind the one it runs, so it starts the next as soon as it finishes instead of idling through
the kernel's round trip. An attempt queued ahead has not started until the worker says so, and the
worker's messages keep their order, so the kernel always knows which: it started once the
attempt before it is done (the worker reads the "skip" the kernel may have sent first, and
answers "skipped", before it says "done"). So a queued attempt is never lost and never runs
twice: if the worker dies, or retires, before starting it, it goes back to the pool; if its
run is cancelled while it waits, it is skipped, or the worker is killed should it have started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import select
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from .._errors import EngineError, WorkerCrashedError
from ._wire import CodeCache

Message = tuple[Any, ...]
log = logging.getLogger("nbtasks.machines")


#: Attempts a busy worker holds queued behind its running one while runs wait for workers.
LOOKAHEAD = 4
#: The C scanner json.loads ends in, without the three Python calls on the way to it.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _parse(frame: bytes | bytearray) -> Any:
    """One JSON value making up all of `frame` (ValueError otherwise), as json.loads would."""
    text = frame.decode()
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


#: Where a process's resident pages can be read (Linux), and their size.
_STATM = os.path.exists(f"/proc/{os.getpid()}/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: What the running attempt's `Lane.ended` resolves with when its worker died first.
DIED: dict[str, Any] = {"died": True}


class Lane:
    """One attempt sent to a worker. `ended` resolves with the worker's outcome message, with
    DIED when the worker died running it, or with None when the attempt never started there
    (skipped, or the worker retired or died first) and must go back to the pool."""

    __slots__ = ("abandoned", "asked", "ended", "key", "on_message", "resend")

    def __init__(self, key: str, loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[Message], None], resend: Callable[[], None]) -> None:
        self.key = key
        self.on_message = on_message
        self.resend = resend  # the worker lost the code it was sent the hash of: send it all
        self.ended: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self.abandoned = False  # its run was cancelled while it was queued
        self.asked = False  # a "skip" for it was sent

    def end(self, message: dict[str, Any] | None) -> None:
        if not self.ended.done():
            self.ended.set_result(message)


class Worker:
    """One worker process. `exited` resolves with its exit code when it dies, whatever killed it."""

    def __init__(self, process: BaseProcess, conn: Connection, preset: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.process = process
        self.conn = conn
        self.preset = preset
        self.pid: int = process.pid or 0
        self.loop = loop
        self.ps = psutil.Process(self.pid)
        self.on_message: Callable[[Message], None] | None = None  # before any lane: "ready"
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.env: Any = None  # the (cwd, sys.path, environ) snapshot it last applied
        self.code = CodeCache()  # the hashes of the task code it holds (see _wire.Job)
        self.parked = 0  # open requests that wait on other runs
        self.claims = 0  # attempts the pool gave it that haven't released it yet
        self.lanes: dict[str, Lane] = {}  # attempts sent, in order: the first one runs
        self.retiring = False  # it said it starts nothing more (its memory stayed high)
        self.oom_rss: int | None = None  # set by the MemoryWatcher when it kills
        self._reading = True
        self._fd = conn.fileno()
        self._buffer = bytearray()
        self._out = bytearray()
        loop.add_reader(self._fd, self.read)
        loop.add_reader(process.sentinel, self._on_exit)

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def read(self) -> None:
        """Deliver every complete message that arrived (the pipe is readable).

        One read takes all that is there and the frames (multiprocessing's: a 4-byte length,
        then JSON) are cut here: each system call lets go of the GIL, and on a busy kernel
        getting it back is what a message costs, not the copy.
        """
        try:
            chunk = os.read(self._fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self._stop_reading()
            return
        self._buffer += chunk
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big", signed=True)
            start = 4
            if size == -1:  # a frame over 2 GB: an 8-byte length follows
                if len(self._buffer) < 12:
                    return
                size, start = int.from_bytes(self._buffer[4:12], "big"), 12
            if len(self._buffer) < start + size:
                return
            try:
                message = _parse(self._buffer[start:start + size])
            except ValueError:
                message = None
            del self._buffer[:start + size]
            try:
                if not (isinstance(message, list) and len(message) >= 2
                        and isinstance(message[0], str)):
                    raise ValueError("not a [kind, key, ...] list")
                self._deliver(message)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                log.warning("dropped a malformed message from %r: %s", self, exc)

    def _deliver(self, message: list[Any]) -> None:
        lane = self.lanes.get(message[1]) if isinstance(message[1], str) else None
        if lane is None:
            if self.on_message is not None:
                self.on_message(tuple(message))
            return  # otherwise a leftover of an attempt that is over
        kind = message[0]
        if kind == "done" and isinstance(message[2], dict):
            if message[2].get("missing_code"):  # it doesn't hold what we thought: resend
                del self.lanes[lane.key]
                self.lanes[lane.key] = lane  # behind what it has queued now
                lane.resend()
                return
            del self.lanes[lane.key]
            lane.end(message[2])
            if message[2].get("retire"):  # it starts nothing more: what it queued goes back
                self.retiring = True
                self._bounce(list(self.lanes.values()))
            elif (head := next(iter(self.lanes.values()), None)) is not None and head.abandoned:
                self.kill()  # it started a run that was cancelled while queued
        elif kind == "skipped":
            del self.lanes[lane.key]
            lane.end(None)
        else:
            lane.on_message(tuple(message))

    def _bounce(self, lanes: list[Lane]) -> None:
        for lane in lanes:
            self.lanes.pop(lane.key, None)
            lane.end(None)

    def queued(self, lane: Lane) -> bool:
        """`lane` was sent but hasn't started: another attempt is ahead of it."""
        return lane.key in self.lanes and next(iter(self.lanes)) != lane.key

    def skip_queued(self) -> None:
        """Ask for every attempt queued behind the running one back (its run waits on others,
        or another worker went idle): each comes back "skipped", to go elsewhere, unless the
        worker started it first."""
        for lane in list(self.lanes.values())[1:]:
            self.skip(lane)

    def skip(self, lane: Lane) -> None:
        if not lane.asked:
            lane.asked = True
            self.send(("skip", lane.key))

    def drain(self) -> None:
        """Read what is left without blocking (a child of the worker may hold the pipe open)."""
        while self._reading and select.select([self._fd], [], [], 0)[0]:
            self.read()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self._fd)

    def _on_exit(self) -> None:
        self.loop.remove_reader(self.process.sentinel)
        # Whatever ended it (a crash, os._exit, a signal), what its runs started dies too. A
        # group's id stays reserved while the group has members, so this reaches them; with
        # none left it finds nothing (a stranger would have to take the freed pid and lead a
        # group of its own within these microseconds).
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        self.drain()  # what it sent before dying (a last log line, or its result)
        self._stop_reading()
        # Messages keep their order: what is still queued behind the first lane never started.
        self._bounce(list(self.lanes.values())[1:])
        self.process.join(0)
        if not self.exited.done():
            self.exited.set_result(self.process.exitcode)
        for lane in self.lanes.values():  # the one it was running, if its outcome didn't come
            lane.end(DIED)
        self.conn.close()
        with contextlib.suppress(ValueError):
            self.process.close()

    def send(self, message: Message) -> None:
        """Queue `message` (pickled now, so an error is the caller's) for one write per turn of
        the loop: a worker sent several attempts and replies pays one system call for all."""
        frame = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        size = len(frame)
        first = not self._out
        if size > 0x7FFFFFFF:
            self._out += b"\xff\xff\xff\xff" + size.to_bytes(8, "big")
        else:
            self._out += size.to_bytes(4, "big")
        self._out += frame
        if first:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        data, self._out = self._out, bytearray()
        if self.exited.done():
            return  # its pipe is closed (and the descriptor's number may be another file's)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            pass  # it died: its sentinel says so, and its attempts end there

    def rss(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    def kill(self) -> None:
        """SIGKILL the worker and whatever it started (it leads its own process group, see
        `_worker._serve`; a worker that already died had its group ended in `_on_exit`)."""
        try:
            if not self.alive or not self.ps.is_running():  # is_running also spots a reused pid
                return
        except psutil.Error:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def wait_ready(self, within: float) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()

        def on_message(message: Message) -> None:
            if message[0] == "ready" and not ready.done():
                ready.set_result(None)

        self.on_message = on_message
        try:
            either: set[asyncio.Future[Any]] = {ready, self.exited}
            done, _ = await asyncio.wait(either, timeout=within,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.on_message = None
        if ready.done():
            return
        self.kill()
        code = self.exited.result() if self.exited.done() else None
        raise WorkerCrashedError(f"a {self.preset} worker failed to start "
                                 f"({describe_exit(code) if done else f'no answer in {within}s'})")

    def __repr__(self) -> str:
        return f"<Worker {self.preset} pid={self.pid}{'' if self.alive else ' dead'}>"


def describe_exit(code: int | None) -> str:
    """'killed by signal SIGKILL (9)', 'exited with code 3'."""
    if code is None:
        return "exited with an unknown status"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by signal {name} ({-code})"
    return f"exited with code {code}"


class MemoryWatcher:
    """A kernel thread that samples busy workers' RSS and kills any past its limit."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._busy: dict[Worker, int] = {}
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._idle = True
        self._statm: dict[Worker, int] = {}  # the watcher thread's open statm files

    def watch(self, worker: Worker, limit: int) -> None:
        # No lock per run: a dict's set and pop are atomic, and the thread is only woken when
        # it sleeps for want of busy workers. It says so (`_idle`) before it looks, so a
        # worker added after its look always finds it idle, and wakes it.
        self._busy[worker] = limit
        if self._idle or self._thread is None:
            with self._cv:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="nbtasks-memory",
                                                    daemon=True)
                    self._thread.start()
                self._cv.notify()

    def unwatch(self, worker: Worker) -> None:
        self._busy.pop(worker, None)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _run(self) -> None:
        try:
            self._sample()
        finally:
            self._forget([])

    def _sample(self) -> None:
        while True:
            with self._cv:
                self._idle = True
                while not self._busy and not self._closed:
                    self._cv.wait()
                    self._idle = False
                    # the first sample waits one interval: most runs are over by then, and
                    # their peak comes back with the result (see the module docstring)
                    self._cv.wait(self.interval)
                    self._idle = True  # before it looks again
                self._idle = False
                if self._closed:
                    return
                busy = list(self._busy.items())
            self._forget(busy)
            for worker, limit in busy:
                rss = self._rss(worker)
                if rss > limit:
                    worker.oom_rss = rss
                    worker.kill()
                    self.unwatch(worker)
            with self._cv:
                self._cv.wait(self.interval)

    def _rss(self, worker: Worker) -> int:
        """`worker`'s resident set. On Linux from its /proc statm, kept open while it is busy:
        one read per sample, where psutil opens, reads and closes the file each time. The open
        file is that process's (not its pid's), so one that died reads as an error, never as a
        stranger's memory."""
        if not _STATM:
            return worker.rss()
        fd = self._statm.get(worker)
        try:
            if fd is None:
                fd = self._statm[worker] = os.open(f"/proc/{worker.pid}/statm", os.O_RDONLY)
            return int(os.pread(fd, 256, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0

    def _forget(self, busy: list[tuple[Worker, int]]) -> None:
        """Close the statm files of workers no longer busy (only this thread uses them)."""
        keep = {worker for worker, _ in busy}
        for worker in [w for w in self._statm if w not in keep]:
            with contextlib.suppress(OSError):
                os.close(self._statm.pop(worker))


class Pool:
    """The warm workers of one preset: at most `size` busy, plus one per run parked in a wait.

    Workers start on demand and stay warm. A dead worker is replaced. A worker whose run is
    waiting on another run doesn't count against `size` (docs/design.md, decision 4, for machines), and the
    extra workers that allowed are retired once they are idle and the waits are over.
    """

    def __init__(self, preset: str, size: int, spawn: Callable[[], Awaitable[Worker]]) -> None:
        self.preset = preset
        self.size = size
        self._spawn = spawn
        self.workers: set[Worker] = set()
        self.idle: list[Worker] = []
        self.waiters: deque[asyncio.Future[Worker]] = deque()
        self.starting = 0
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def parked(self) -> int:
        return sum(1 for w in self.workers if w.parked)

    def _room(self) -> int:
        return self.size + self.parked() - len(self.workers) - self.starting

    async def acquire(self) -> Worker:
        """A warm idle worker, a new one, a busy one to queue behind (see `LOOKAHEAD`), or the
        next one released. The caller holds a claim on it until `release`."""
        if self.closed:
            raise EngineError("the process executor is closed")
        while self.idle:
            worker = self.idle.pop()
            if worker.alive and not worker.retiring:
                worker.claims += 1
                return worker
        if not self.waiters and self._room() <= 0:
            for worker in self.workers:
                if self._takes(worker):
                    worker.claims += 1
                    return worker
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.grow()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result(), reuse=True)
            elif fut in self.waiters:
                self.waiters.remove(fut)
            raise

    def _takes(self, worker: Worker) -> bool:
        """Whether `worker` can take one more attempt now: idle, or busy with room in its queue
        (`LOOKAHEAD`) behind its run when no worker can start (a run waiting on others can't:
        what it waits for might be the one queued behind it)."""
        if not worker.alive or worker.retiring:
            return False
        if worker.claims == 0:
            return True
        return (worker.claims <= LOOKAHEAD and not worker.parked and self._room() <= 0
                and not self.starting)

    def grow(self, at_least: int = 0) -> list[asyncio.Task[None]]:
        """Start workers for waiting runs (or up to `at_least` warm ones) while there is room."""
        room = self._room()
        if room <= 0:
            return []  # the usual case once the pool is full: every run waits here
        want = max(len(self.waiters) - self.starting, at_least - len(self.workers) - self.starting)
        started = []
        for _ in range(max(0, min(want, room))):
            self.starting += 1
            task = asyncio.get_running_loop().create_task(self._start_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(task)
        return started

    async def _start_one(self) -> None:
        try:
            worker = await self._spawn()
        except Exception as exc:
            self.starting -= 1
            if not self.waiters:
                log.warning("a %s worker did not start: %s", self.preset, exc)
            while self.waiters:
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)
                    break
            return
        self.starting -= 1
        if self.closed:
            worker.kill()
            return
        self.workers.add(worker)
        worker.exited.add_done_callback(lambda _f: self.discard(worker))
        self._hand(worker)

    def _hand(self, worker: Worker) -> None:
        while self.waiters and self._takes(worker):
            fut = self.waiters.popleft()
            if not fut.done():
                worker.claims += 1
                fut.set_result(worker)
        if worker.claims:
            return
        for other in self.workers:  # it is idle: what waits queued behind another run comes here
            other.skip_queued()
        if len(self.workers) > self.size + self.parked():
            self.discard(worker, replace=False)  # a borrowed worker, no longer needed
        elif worker.alive and not worker.retiring and worker not in self.idle:
            self.idle.append(worker)

    def release(self, worker: Worker, *, reuse: bool) -> None:
        """An attempt on `worker` is over (or went elsewhere): keep it warm, or kill and
        replace it (and what is queued on it goes back to the pool)."""
        worker.claims = max(0, worker.claims - 1)
        if (reuse and worker.alive and not worker.retiring and worker in self.workers
                and not self.closed):
            self._hand(worker)
        else:
            self.discard(worker)

    def discard(self, worker: Worker, *, replace: bool = True) -> None:
        if worker not in self.workers:
            return
        self.workers.discard(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        worker.kill()
        if not self.closed:
            self.grow(at_least=len(self.workers) + 1 if replace else 0)

    def close(self) -> None:
        self.closed = True
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(EngineError("the process executor is closed"))
        self.waiters.clear()
        for worker in list(self.workers):
            worker.kill()
        for task in list(self._tasks):
            task.cancel()
