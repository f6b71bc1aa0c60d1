"""The kernel, as seen from inside a worker: nbtasks calls become messages on a channel.

A run on a machine preset executes in another process (a pool worker, or a Dask worker). Its
code still says `nbtasks.logger.info(...)`, `await child.trigger_and_wait(...)` or
`await nbtasks.wait.for_(...)`, and those must act on the kernel's engine, which owns the
queues, the clock and the store. So in a worker:

- side effects (log lines, metadata, tags) are sent and forgotten, in order;
- everything else is a request whose reply comes back on the same channel. The kernel serves
  it for the run (`_serve.py`), so a wait parks the parent run and gives its queue slot back
  exactly as it does for a run in the kernel.

Objects bound to the kernel's engine (a Task, `nbtasks.wait`, `nbtasks.runs`, an Engine) can't
travel; `_wire.dump_job` swaps them for the stubs built here, which find the current run's
channel when they are called.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, cast

from .._context import CURRENT
from .._errors import ConfigurationError, EngineError, RunWaitTimeoutError
from .._handles import BatchHandle, BatchResult, Result, RunHandle
from .._status import RunStatus
from .._tasks import DEFAULT_REGISTRY, Registry, Task, TaskDefinition
from .._tokens import WaitResult, WaitToken
from .._wait import _seconds

#: Requests that may wait on other runs (the run parks in the kernel while they are open).
PARKING = frozenset({"trigger_and_wait", "batch_trigger_and_wait", "result", "results",
                     "wait_for", "wait_until", "for_token"})
#: (run id, task id, status, output JSON, error record): a Result as it crosses the channel.
ResultWire = tuple[str, str, str, str | None, dict[str, Any] | None]
#: (run id, task id, is_cached): a RunHandle as it crosses the channel.
HandleWire = tuple[str, str, bool]


class Channel(Protocol):
    """A worker's line to the kernel. Thread-safe: sync bodies send from their own threads."""

    def send(self, message: tuple[Any, ...]) -> None:
        """Send a one-way message; messages arrive in the order they were sent."""
        ...

    def request(self, key: str, method: str, args: tuple[Any, ...]
                ) -> tuple[int, concurrent.futures.Future[Any]]:
        """Send a request for attempt `key`; returns its id and a future for the reply."""
        ...

    def cancel(self, key: str, request_id: int) -> None:
        """Tell the kernel the caller stopped waiting for `request_id` (its reply is dropped)."""
        ...

    def wait(self, fut: concurrent.futures.Future[Any], timeout: float | None) -> Any:
        """Block for a reply (concurrent.futures.TimeoutError after `timeout` seconds)."""
        ...


def result_from_wire(w: ResultWire) -> Result[Any]:
    return Result(w[0], w[1], RunStatus(w[2]), w[3], w[4])


class RemoteEngine:
    """One attempt's view of the kernel: its AttemptSink, and the engine its handles talk to.

    Everything a `Task`, a `RunHandle` or a `BatchHandle` asks of an Engine is here, as a
    request. Blocking forms refuse to run on the worker's event loop, as they do in the kernel.
    """

    def __init__(self, channel: Channel, key: str) -> None:
        self.channel = channel
        self.key = key
        self.runs: RemoteRuns = RUNS
        self.wait: RemoteWait = WAIT

    # ------------------------------------------------------------------ AttemptSink

    def log(self, level: str, message: str, attributes: dict[str, Any] | None) -> None:
        self.channel.send(("log", self.key, level, message, attributes))

    def metadata_changed(self, metadata: dict[str, Any]) -> None:
        self.channel.send(("metadata", self.key, metadata))

    def tags_changed(self, tags: list[str]) -> None:
        self.channel.send(("tags", self.key, list(tags)))

    # ------------------------------------------------------------------ requests

    def call(self, method: str, *args: Any, timeout: float | None = None,
             blocking: bool = False) -> Any:
        """A request from sync code. `blocking` ones wait on other runs, so not from a loop."""
        if blocking and _on_a_loop():
            raise EngineError(
                "this call blocks, and it was made on the worker's event loop (an async task "
                "body): use the async form instead, e.g. `await handle`")
        rid, fut = self.channel.request(self.key, method, args)
        try:
            return self.channel.wait(fut, timeout)
        except concurrent.futures.TimeoutError:
            self.channel.cancel(self.key, rid)
            raise RunWaitTimeoutError(
                f"not final after {timeout}s; the run goes on (wait again, or cancel it)"
            ) from None

    async def acall(self, method: str, *args: Any) -> Any:
        """A request from async code; cancelling the caller withdraws it in the kernel too."""
        rid, fut = self.channel.request(self.key, method, args)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self.channel.cancel(self.key, rid)
            raise

    # ------------------------------------------------------------------ TaskOwner

    def _handle(self, w: HandleWire) -> RunHandle[Any]:
        return RunHandle(cast(Any, self), w[0], w[1], is_cached=w[2])

    def trigger_encoded(self, defn: TaskDefinition, payload_json: str,
                        options: dict[str, Any]) -> RunHandle[Any]:
        return self._handle(self.call("trigger", defn.id, payload_json, options))

    async def trigger_async(self, defn: TaskDefinition, payload_json: str,
                            options: dict[str, Any]) -> RunHandle[Any]:
        return self._handle(await self.acall("trigger", defn.id, payload_json, options))

    async def trigger_and_wait_encoded(self, defn: TaskDefinition, payload_json: str,
                                       options: dict[str, Any]) -> Result[Any]:
        return result_from_wire(await self.acall("trigger_and_wait", defn.id, payload_json,
                                                 options))

    def batch_trigger_encoded(self, defn: TaskDefinition, items: list[tuple[str, dict[str, Any]]],
                              options: dict[str, Any]) -> BatchHandle[Any]:
        batch_id, handles = self.call("batch_trigger", defn.id, items, options)
        return BatchHandle(cast(Any, self), batch_id, [self._handle(h) for h in handles])

    async def batch_trigger_and_wait_encoded(
        self, defn: TaskDefinition, items: list[tuple[str, dict[str, Any]]],
        options: dict[str, Any],
    ) -> BatchResult[Any]:
        batch_id, results = await self.acall("batch_trigger_and_wait", defn.id, items, options)
        return BatchResult(batch_id, [result_from_wire(r) for r in results])

    # ------------------------------------------------------------------ what handles use

    def status_of(self, run_id: str) -> RunStatus:
        return RunStatus(self.call("status", run_id))

    def wait_result(self, run_id: str, timeout: float | None = None) -> Result[Any]:
        return result_from_wire(self.call("result", run_id, timeout=timeout, blocking=True))

    def wait_results(self, run_ids: list[str], timeout: float | None = None) -> list[Result[Any]]:
        wires = self.call("results", run_ids, timeout=timeout, blocking=True)
        return [result_from_wire(w) for w in wires]

    async def result_async(self, run_id: str) -> Result[Any]:
        return result_from_wire(await self.acall("result", run_id))

    async def results_async(self, run_ids: list[str]) -> list[Result[Any]]:
        return [result_from_wire(w) for w in await self.acall("results", run_ids)]


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


#: The process worker's own channel, for calls made outside a run's context (a thread the
#: run started itself). Dask workers have none: there, calls must come from inside the run.
PROCESS_REMOTE: list[RemoteEngine] = []


def current_remote() -> RemoteEngine:
    """The RemoteEngine of the run executing here; raises outside one."""
    scope = CURRENT.get()
    if scope is not None and isinstance(scope.engine, RemoteEngine):
        return scope.engine
    if PROCESS_REMOTE:
        return PROCESS_REMOTE[0]
    raise EngineError("this code runs in a worker, outside any run: call nbtasks from inside "
                      "a task's run (or from a thread it started with its context)")


# --------------------------------------------------------------------------- stubs


class RemoteWait:
    """`nbtasks.wait` inside a worker: the kernel's clock and tokens, by request."""

    async def until(self, date: datetime, *, throw_if_in_the_past: bool = False) -> None:
        if not isinstance(date, datetime) or date.tzinfo is None:
            raise ConfigurationError("wait.until: pass an aware datetime")
        await current_remote().acall("wait_until", date.timestamp(), throw_if_in_the_past)

    async def for_(self, **units: float) -> None:
        await current_remote().acall("wait_for", _seconds(units))

    def create_token(self, *, timeout: Any = None, tags: Any = None,
                     idempotency_key: str | None = None) -> WaitToken:
        return cast(WaitToken, current_remote().call("create_token", timeout, tags,
                                                     idempotency_key))

    def complete_token(self, token: WaitToken | str, data: Any = None) -> bool:
        return bool(current_remote().call("complete_token", str(token), data))

    async def for_token(self, token: WaitToken | str) -> WaitResult[Any]:
        return cast(WaitResult[Any], await current_remote().acall("for_token", str(token)))

    def list_tokens(self, status: str | None = "WAITING") -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], current_remote().call("list_tokens", status))

    def for_sync(self, **units: float) -> None:
        current_remote().call("wait_for", _seconds(units), blocking=True)

    def until_sync(self, date: datetime, *, throw_if_in_the_past: bool = False) -> None:
        if not isinstance(date, datetime) or date.tzinfo is None:
            raise ConfigurationError("wait.until: pass an aware datetime")
        current_remote().call("wait_until", date.timestamp(), throw_if_in_the_past,
                              blocking=True)

    def for_token_sync(self, token: WaitToken | str) -> WaitResult[Any]:
        return cast(WaitResult[Any],
                    current_remote().call("for_token", str(token), blocking=True))


#: The `runs` methods a worker may call; each runs in the kernel as if from a cell.
RUNS_METHODS = frozenset({"retrieve", "list", "count", "cancel", "replay", "reschedule"})


class RemoteRuns:
    """`nbtasks.runs` inside a worker: the kernel's store, by request."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in RUNS_METHODS:
            raise AttributeError(
                f"runs.{name} is not available inside a worker; use one of "
                f"{', '.join(sorted(RUNS_METHODS))}")

        def forward(*args: Any, **kwargs: Any) -> Any:
            remote = current_remote()
            value = remote.call("runs", name, args, kwargs)
            if isinstance(value, tuple) and value and value[0] == "handle":
                return remote._handle(value[1:])
            return value

        return forward


class RemoteTasks:
    """`nbtasks.tasks` inside a worker: trigger by id; the kernel validates the payload."""

    def trigger(self, task_id: str, payload: Any = None, **options: Any) -> RunHandle[Any]:
        return task_stub(task_id, None).trigger(payload, **options)

    async def trigger_and_wait(self, task_id: str, payload: Any = None,
                               **options: Any) -> Result[Any]:
        return await task_stub(task_id, None).trigger_and_wait(payload, **options)

    def batch_trigger(self, task_id: str, items: Sequence[Any],
                      **options: Any) -> BatchHandle[Any]:
        return task_stub(task_id, None).batch_trigger(items, **options)


class RemoteEngineView:
    """What an `Engine` referenced by a run's code becomes in a worker."""

    @property
    def wait(self) -> RemoteWait:
        return WAIT

    @property
    def runs(self) -> RemoteRuns:
        return RUNS


WAIT = RemoteWait()
RUNS = RemoteRuns()
TASKS = RemoteTasks()

#: Tasks unpickled in a worker live here; their owner is the current run's RemoteEngine.
REMOTE_REGISTRY = Registry()
REMOTE_REGISTRY.owner = current_remote


def _runs_in_the_kernel(payload: Any, ctx: Any) -> Any:
    raise EngineError("a task referenced from a worker only triggers; it runs where the kernel "
                      "sends it")


def task_stub(task_id: str, schema: Any) -> Task[Any, Any]:
    """A Task that was captured by a run's code: triggers go to the kernel by id."""
    return Task(TaskDefinition(task_id, _runs_in_the_kernel, schema=schema), REMOTE_REGISTRY)


def wait_stub() -> RemoteWait:
    return WAIT


def runs_stub() -> RemoteRuns:
    return RUNS


def tasks_stub() -> RemoteTasks:
    return TASKS


def engine_stub() -> RemoteEngineView:
    return RemoteEngineView()


def install_worker_mode(process_remote: RemoteEngine | None) -> None:
    """Point this process's module-level API at the kernel. Only ever in a separate process."""
    import nbtasks

    from .. import _capture

    if process_remote is not None:
        PROCESS_REMOTE[:] = [process_remote]
    DEFAULT_REGISTRY.owner = current_remote
    for name, stub in (("wait", WAIT), ("runs", RUNS), ("tasks", TASKS)):
        setattr(nbtasks, name, stub)
    _capture.install()


__all__ = ("Channel", "RemoteEngine", "current_remote", "install_worker_mode")
