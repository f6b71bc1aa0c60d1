"""The worker process of a machine preset's pool: one attempt at a time, over a pipe.

The main thread is the pipe's only reader. Idle, it blocks on the next attempt. During an
attempt it runs the lifecycle on an asyncio loop that watches the pipe for replies to the
run's requests; sync bodies and hooks run on daemon threads as in the kernel, so the loop
stays free to read. When code on the loop thread itself blocks on a request (an async body
calling `trigger()`), it reads the pipe itself until its reply comes.

Everything it says goes up as JSON (the kernel never unpickles what a worker sends). The
kernel may queue a few attempts behind the running one (`_pool.LOOKAHEAD`): they wait here in
`PipeChannel.queue`, and a "skip" for it is answered "skipped" at once. After each attempt the
worker reads what arrived, answers those skips, and only then says "done": so the kernel knows
that an attempt not skipped before the one ahead of it was done has started.

The worker leads its own process group (so an interrupt sent to the kernel's group doesn't
reach it, and a kill takes whatever it started), dies with the kernel, and holds itself to
its preset's cores before any library reads the thread-count variables.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import itertools
import json
import math
import os
import pickle
import resource
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

from ._dask_wire import dumps_args
from ._remote import RemoteEngine, install_worker_mode
from ._wire import Job, run_job
from .inline import DaemonThreads, InlineSync

#: Thread-count variables of the usual native pools (OpenMP, OpenBLAS, MKL, Accelerate, numexpr).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

#: (cwd, or None where the worker reads it from /proc; sys.path; environment)
Snapshot = tuple[str | None, list[str], dict[str, str]]
#: One encoder for every message (json.dumps with options builds one per call).
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


class PipeChannel:
    """The worker's end of the pipe; `_remote.Channel` for a pool worker."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        # One poll object for the worker's life: Connection.poll builds a selector per call.
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)
        self.loop = loop
        self.reader = threading.get_ident()
        self.lock = threading.Lock()
        self.pending: dict[int, concurrent.futures.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.watching = False
        self.queue: deque[tuple[Any, ...]] = deque()  # attempts sent ahead, not started
        self.stopping = False

    def send(self, message: tuple[Any, ...]) -> None:
        """One JSON frame up. A value JSON can't hold (a log attribute) goes as its str(), as log
        attributes do in the kernel: a log line must never fail the run."""
        data = _ENCODER.encode(message).encode()
        frame = len(data).to_bytes(4, "big") + data if len(data) < 0x7FFFFFFF else None
        with self.lock:
            if frame is None:
                self.conn.send_bytes(data)  # over 2 GB: multiprocessing's long header
                return
            view = memoryview(frame)
            while view:
                view = view[os.write(self.fd, view):]

    def request(self, key: str, method: str, args: tuple[Any, ...]
                ) -> tuple[int, concurrent.futures.Future[Any]]:
        encoded = dumps_args(args)  # raises here, in the caller, for what JSON can't carry
        rid = next(self.ids)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending[rid] = fut
        if not self.watching:  # the loop reads replies only for attempts that make requests
            self.watching = True
            self.loop.call_soon_threadsafe(self.loop.add_reader, self.conn.fileno(),
                                           self._readable)
        self.send(("call", key, rid, method, encoded))
        return rid, fut

    def cancel(self, key: str, request_id: int) -> None:
        if self.pending.pop(request_id, None) is not None:
            self.send(("cancel", key, request_id))

    def wait(self, fut: concurrent.futures.Future[Any], timeout: float | None) -> Any:
        if threading.get_ident() != self.reader:
            return fut.result(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not fut.done():  # nobody else can read the reply: read it here
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._recv(left):
                raise concurrent.futures.TimeoutError
        return fut.result()

    def _recv(self, timeout: float | None) -> bool:
        """Take one message off the pipe and deliver it; False if none came in time.

        Exactly one frame is read (its 4-byte length, then its pickle), never more: what is
        left stays in the pipe, where the loop's reader and `poll` still see it."""
        try:
            if timeout is not None and not self.poller.poll(max(0, math.ceil(timeout * 1000))):
                return False
            header = self._read(4)
            size = int.from_bytes(header, "big", signed=True)
            if size == -1:  # over 2 GB: an 8-byte length follows
                size = int.from_bytes(self._read(8), "big")
            message = pickle.loads(self._read(size))
        except (EOFError, OSError):
            os._exit(0)  # the kernel is gone: nobody is left to report to
        self._handle(message)
        return True

    def _read(self, size: int) -> bytes:
        data = os.read(self.fd, size)
        if len(data) == size:
            return data
        parts, got = [data], len(data)
        while got < size:
            if not data:
                raise EOFError
            data = os.read(self.fd, size - got)
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "reply":
            _, rid, ok, value = message
            fut = self.pending.pop(rid, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        elif kind == "run":
            self.queue.append(tuple(message[1:]))
        elif kind == "skip":
            for job in self.queue:
                if job[0] == message[1]:
                    self.queue.remove(job)
                    self.send(("skipped", message[1]))
                    break
        elif kind == "stop":
            self.stopping = True
        # anything else is a late reply to a request its run gave up on

    def catch_up(self) -> None:
        """Take in what the kernel sent meanwhile (attempts, skips) without waiting."""
        while self._recv(0):
            pass

    def _readable(self) -> None:
        while self._recv(0):
            pass

    def attempt(self, coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        """Run one attempt's coroutine (the loop reads replies once it makes a request).

        On a task of its own, as on the kernel's loop: an async body that opens with
        `asyncio.timeout`, a TaskGroup or (Python 3.12+) `asyncio.wait_for` needs a current
        task, and stepping the coroutine by hand left it none ("Timeout should be used inside
        a task").
        """
        try:
            return self.loop.run_until_complete(coro)  # wrapped in a task of its own
        finally:
            if self.watching:
                self.watching = False
                self.loop.remove_reader(self.conn.fileno())

    def next_job(self) -> tuple[Any, ...] | None:
        """The next attempt, blocking while idle; None when told to stop."""
        while not self.queue:
            if self.stopping or not self._recv(None):
                return None
        return self.queue.popleft()


def cores_for(cpu: float, available: list[int], offset: int) -> list[int]:
    """Whole cores for a preset's vCPUs (rounded up, at most the host's), starting at `offset`."""
    n = max(1, min(len(available), -int(-cpu // 1)))
    return [available[(offset + i) % len(available)] for i in range(n)]


def _hold_cpu(cores: list[int]) -> None:
    with contextlib.suppress(AttributeError, OSError):  # no affinity API (macOS)
        os.sched_setaffinity(0, cores)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(len(cores))


def _die_with_kernel() -> None:
    """SIGKILL this worker when the kernel dies, even mid-run in C code holding the GIL.

    The fork server exits once every holder of the kernel's "alive" pipe is gone, and each
    child it forks is handed a copy: we close ours, so it exits with the kernel, and
    PR_SET_PDEATHSIG (Linux) turns its exit into our SIGKILL.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 - private, may be absent
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the fork server was already gone before the signal was armed
        os._exit(0)


def _follow_cwd(kernel: int) -> None:
    """Linux: move to the kernel's working directory, read from /proc at each attempt (so the
    kernel never pays a system call for it; elsewhere it comes with the snapshot)."""
    with contextlib.suppress(OSError):
        cwd = os.readlink(f"/proc/{kernel}/cwd")
        if cwd != os.getcwd():
            os.chdir(cwd)


def _apply(snapshot: Snapshot, cores: list[int]) -> None:
    """Take the kernel's sys.path and environment (the fork server froze older ones)."""
    cwd, path, environ = snapshot
    if cwd is not None:
        with contextlib.suppress(OSError):
            os.chdir(cwd)
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(len(cores))


def main(conn: Connection, cores: list[int], kernel: int, limit: int = 0,
         recycle_share: float = 1.0) -> None:
    """Entry point of a worker process (called by multiprocessing in the child)."""
    try:
        _serve(conn, cores, kernel, limit, recycle_share)
    except OSError:  # the pipe broke: the kernel closed the pool or went away
        os._exit(0)


def retires(limit: int, share: float, peak: int | None = None) -> bool:
    """Should this worker start nothing more? Its peak went past its machine's memory (the
    kernel fails the attempt), or its memory stayed over `share` of it after the run, and the
    next run must not start with someone else's memory. ru_maxrss is the peak: below the share,
    the memory now is too, and it costs no sampling."""
    if not limit:
        return False
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if peak < limit * share:
        return False
    if peak > limit:
        return True
    import psutil

    return bool(psutil.Process().memory_info().rss >= limit * share)


def _serve(conn: Connection, cores: list[int], kernel: int, limit: int,
           recycle_share: float) -> None:
    with contextlib.suppress(OSError):
        os.setsid()
    _die_with_kernel()
    _hold_cpu(cores)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    channel = PipeChannel(conn, loop)
    install_worker_mode(RemoteEngine(channel, ""))
    inline = InlineSync(loop, DaemonThreads(32, "nbtasks-worker-sync"))
    channel.send(("ready", os.getpid()))
    while (job := channel.next_job()) is not None:
        key, snapshot, fields = job
        attempt = Job(*fields)
        if snapshot is not None:
            _apply(snapshot, cores)
        if snapshot is None or snapshot[0] is None:
            _follow_cwd(kernel)
        message = channel.attempt(run_job(attempt, RemoteEngine(channel, key), inline.bind))
        message["maxrss"] = peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        retire = retires(limit, recycle_share, peak)
        if retire:
            message["retire"] = True
        else:
            channel.catch_up()  # skips first: what isn't skipped before "done" has started
        channel.send(("done", key, message))
        if retire:
            os._exit(0)
