"""The Dask worker's side of `DaskExecutor` (imported only through `nbtasks.executors.dask`).

`run_on_dask` is the Dask task. The attempt's lifecycle runs on an event loop of the task's own
thread (one per Dask thread, kept), and its sync code (the run, hooks) runs inline on that
thread as on a pool worker (`inline.InlineSync`): where Dask's APIs expect it
(`get_worker().get_current_task()`, `secede`, `worker_client`), and with no thread hop per
call. While a request that waits on other runs is open, the task
thread secedes from the worker's thread pool, so a parent waiting on a child can't hold the
last thread the child needs (the Dask form of docs/design.md, decision 4); it rejoins when the waits end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any

import distributed

from .._context import CancelSignal
from .._runtime import to_loop
from ._dask_wire import Outbox, dumps_args, dumps_message
from ._remote import PARKING, RemoteEngine, install_worker_mode
from ._wire import Job, run_job
from .inline import DaemonThreads, InlineSync

_IDS = itertools.count(1)
_ACTIVE: dict[str, _Running] = {}
_INSTALLED: list[bool] = []
_THREADS: list[DaemonThreads] = []
_LOCAL = threading.local()  # each Dask thread's event loop
_OUTBOXES: dict[str, Outbox] = {}  # topic (one per kernel) -> its batches from this process
_LOCK = threading.Lock()


def _outbox(worker: Any, topic: str, secret: bytes) -> Outbox:
    with _LOCK:
        box = _OUTBOXES.get(topic)
        if box is None or box.secret != secret:
            box = _OUTBOXES[topic] = Outbox(topic, secret, worker.log_event,
                                            worker.loop.add_callback)
        return box


def _threads() -> DaemonThreads:
    with _LOCK:
        if not _THREADS:
            _THREADS.append(DaemonThreads(64, "nbtasks-dask-sync"))
        return _THREADS[0]


def _loop() -> asyncio.AbstractEventLoop:
    """This Dask thread's event loop for attempt lifecycles (made once, kept for the next)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_LOCAL, "loop", None)
    if loop is None or loop.is_closed():
        loop = _LOCAL.loop = asyncio.new_event_loop()
    return loop


class DaskChannel:
    """`_remote.Channel` for an attempt on a Dask worker: signed JSON events up (batched, see
    `_dask_wire`), `Client.run` down."""

    def __init__(self, worker: Any, outbox: Outbox, running: _Running) -> None:
        self.address = worker.address
        self.outbox = outbox
        self.running = running
        self.pending: dict[int, concurrent.futures.Future[Any]] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        self.outbox.send(dumps_message(message))

    def request(self, key: str, method: str, args: tuple[Any, ...]
                ) -> tuple[int, concurrent.futures.Future[Any]]:
        encoded = dumps_args(args)  # raises here, in the caller, for what JSON can't carry
        rid = next(_IDS)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending[rid] = fut
        if method in PARKING:
            self.running.waits(+1)
            fut.add_done_callback(lambda _f: self.running.waits(-1))
        self.send(("call", key, rid, method, encoded, self.address))
        return rid, fut

    def cancel(self, key: str, request_id: int) -> None:
        fut = self.pending.pop(request_id, None)
        if fut is not None:
            fut.cancel()
            self.send(("cancel", key, request_id))

    def wait(self, fut: concurrent.futures.Future[Any], timeout: float | None) -> Any:
        return fut.result(timeout)


class _Running:
    """One attempt on this worker, its lifecycle on the task thread's own loop."""

    def __init__(self) -> None:
        self.signal = CancelSignal()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.task_thread = threading.get_ident()
        self.open_waits = 0
        self.seceded = False
        self.lock = threading.Lock()
        self.channel: DaskChannel | None = None

    def execute(self, job: Job, remote: RemoteEngine) -> dict[str, Any]:
        """On the Dask task thread: run the lifecycle to its end, sync code inline."""
        loop = self.loop = _loop()
        inline = InlineSync(loop, _threads())
        self.task = loop.create_task(run_job(job, remote, inline.bind, self.signal))
        try:
            return loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            return {"cancelled": True}

    def _on_task_thread(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self.task_thread:
            fn()
        elif self.loop is not None:  # dropped if the attempt is over and its loop closed
            to_loop(self.loop, fn)

    def waits(self, delta: int) -> None:
        """A request that waits on other runs opened (+1) or closed (-1)."""
        with self.lock:
            self.open_waits += delta
            first, last = delta > 0 and self.open_waits == 1, self.open_waits == 0
        if first:
            self._on_task_thread(self._secede)  # a sync body about to block: at once
        elif last:
            self._on_task_thread(self._rejoin)

    def _secede(self) -> None:
        if not self.seceded:
            self.seceded = True
            distributed.secede()  # type: ignore[no-untyped-call]

    def _rejoin(self) -> None:
        if self.seceded and self.open_waits == 0:
            self.seceded = False
            distributed.rejoin()  # type: ignore[no-untyped-call]


def run_on_dask(job: Job, key: str, topic: str, secret: bytes, kernel_pid: int
                ) -> dict[str, Any]:
    """The Dask task: one attempt's lifecycle on this worker.

    The outcome goes up as the last message of the attempt's batch (so after every log line it
    wrote, in the same event), and it is the task's result too. The kernel reads the event and
    never fetches the result, which would cost a round trip to the worker: per run, the submit
    and this one event are all that travel. The result is the fallback when the task failed in
    Dask itself (a killed worker, a cancelled task).
    """
    worker = distributed.get_worker()
    running = _Running()
    channel = running.channel = DaskChannel(worker, _outbox(worker, topic, secret), running)
    if os.getpid() != kernel_pid and not _INSTALLED:  # not a threaded cluster in the kernel
        _INSTALLED.append(True)
        install_worker_mode(None)
    _ACTIVE[key] = running
    try:
        outcome = running.execute(job, RemoteEngine(channel, key))
    finally:
        _ACTIVE.pop(key, None)
    channel.send(("done", key, outcome))
    return outcome


def deliver(key: str, rid: int, ok: bool, blob: bytes) -> None:
    """Runs on the worker (`Client.run`): the reply to one of an attempt's requests."""
    running = _ACTIVE.get(key)
    channel = None if running is None else running.channel
    fut = None if channel is None else channel.pending.pop(rid, None)
    if fut is None or fut.done():
        return
    value = pickle.loads(blob)
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def cancel_on_dask(key: str, reason: str) -> None:
    """Runs on the worker (`Client.run`): cancel or time out the attempt `key`."""
    running = _ACTIVE.get(key)
    if running is None or running.loop is None or running.task is None:
        return
    running.signal.abort(reason)
    running.loop.call_soon_threadsafe(running.task.cancel)
