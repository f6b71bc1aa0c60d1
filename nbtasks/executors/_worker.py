"""The worker process of a machine preset's pool: one attempt at a time, over a pipe.

The main thread runs each attempt's lifecycle on an asyncio loop that lives as long as the
worker; sync bodies and hooks run on daemon threads, as in the kernel. A reader thread takes
messages from the kernel: the next attempt, and replies to the run's requests (a sync body
blocked on one must be answered while the loop is busy elsewhere).

The worker leads its own process group (so an interrupt sent to the kernel's group doesn't
reach it, and a kill takes whatever it started), dies with its parent, and holds itself to
its preset's cores before any library reads the thread-count variables.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import itertools
import os
import queue
import resource
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from .._errors import TaskRunError
from .._lifecycle import error_record
from ._remote import RemoteEngine, install_worker_mode
from ._wire import load_job, run_job
from .inline import DaemonThreads

#: Thread-count variables of the usual native pools (OpenMP, OpenBLAS, MKL, Accelerate, numexpr).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

Snapshot = tuple[str, list[str], dict[str, str]]


class PipeChannel:
    """The worker's end of the pipe; `_remote.Channel` for a pool worker."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue[tuple[str, Snapshot | None, bytes] | None] = \
            queue.SimpleQueue()
        self.pending: dict[int, concurrent.futures.Future[Any]] = {}
        self.ids = itertools.count(1)
        threading.Thread(target=self._read, name="nbtasks-worker-reader", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock:
            self.conn.send(message)

    def request(self, key: str, method: str, args: tuple[Any, ...]
                ) -> tuple[int, concurrent.futures.Future[Any]]:
        rid = next(self.ids)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending[rid] = fut
        self.send(("call", key, rid, method, args))
        return rid, fut

    def cancel(self, key: str, request_id: int) -> None:
        if self.pending.pop(request_id, None) is not None:
            self.send(("cancel", key, request_id))

    def _read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "run":
                    self.jobs.put(message[1:])
                elif kind == "reply":
                    _, rid, ok, value = message
                    fut = self.pending.pop(rid, None)
                    if fut is not None and not fut.done():
                        if ok:
                            fut.set_result(value)
                        else:
                            fut.set_exception(value)
                elif kind == "stop":
                    self.jobs.put(None)
                    return
        except (EOFError, OSError):
            os._exit(0)  # the kernel is gone: nobody is left to report to


def cores_for(cpu: float, available: list[int], offset: int) -> list[int]:
    """Whole cores for a preset's vCPUs (rounded up, at most the host's), starting at `offset`."""
    n = max(1, min(len(available), -int(-cpu // 1)))
    return [available[(offset + i) % len(available)] for i in range(n)]


def _hold_cpu(cores: list[int]) -> None:
    with contextlib.suppress(AttributeError, OSError):  # no affinity API (macOS)
        os.sched_setaffinity(0, cores)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(len(cores))


def _die_with_parent() -> None:
    """Linux: SIGKILL us if the fork server (and so the kernel) goes away."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _apply(snapshot: Snapshot, cores: list[int]) -> None:
    """Take the kernel's cwd, sys.path and environment (the fork server froze older ones)."""
    cwd, path, environ = snapshot
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(len(cores))


def main(conn: Connection, cores: list[int]) -> None:
    """Entry point of a worker process (called by multiprocessing in the child)."""
    try:
        _serve(conn, cores)
    except OSError:  # the pipe broke: the kernel closed the pool or went away
        os._exit(0)


def _serve(conn: Connection, cores: list[int]) -> None:
    with contextlib.suppress(OSError):
        os.setsid()
    _die_with_parent()
    _hold_cpu(cores)
    channel = PipeChannel(conn)
    install_worker_mode(RemoteEngine(channel, ""))
    threads = DaemonThreads(32, "nbtasks-worker-sync")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    channel.send(("ready", os.getpid()))
    while (job := channel.jobs.get()) is not None:
        key, snapshot, blob = job
        if snapshot is not None:
            _apply(snapshot, cores)
        try:
            message = loop.run_until_complete(_attempt(blob, RemoteEngine(channel, key), threads))
        except BaseException as exc:  # a bug of ours, or SystemExit from the run
            err = TaskRunError(f"the worker failed outside the run: {type(exc).__name__}: {exc}")
            message = {"load_error": error_record(err)}
        message["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        channel.send(("done", key, message))


async def _attempt(blob: bytes, remote: RemoteEngine, threads: DaemonThreads) -> dict[str, Any]:
    try:
        job = load_job(blob)
    except Exception as exc:
        err = TaskRunError(f"the worker could not load the task: {type(exc).__name__}: {exc}")
        return {"load_error": error_record(err)}
    return await run_job(job, remote, threads.run)
