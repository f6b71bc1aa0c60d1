"""Waiting for runs to finish: the part of the Engine behind `wait()`, `await` and Results.

A waiter hears of a run only once its final state is committed (the scheduler's after-commit
callbacks); a waiter inside a run parks that run, so its queue slot goes back while it waits.
Runs already finished are read from the store, many ids per query.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from functools import partial
from typing import TYPE_CHECKING, Any

from ._context import CURRENT, AttemptScope
from ._errors import EngineError, RunNotFoundError, RunWaitTimeoutError
from ._handles import Result
from ._payload import loads
from ._runstate import RunState
from ._status import FINAL, RunStatus

if TYPE_CHECKING:
    from ._runs import RunsAPI
    from ._runtime import Runtime
    from ._scheduler import Scheduler
    from .stores import Store


def _result_of(run: RunState) -> Result[Any]:
    return Result(run.id, run.task_id, run.status, run.output_json, run.error)


def _settle(fut: asyncio.Future[Result[Any]], run: RunState) -> None:
    if not fut.done():
        fut.set_result(_result_of(run))


class ResultWaiting:
    """Mixed into Engine; every method but the sync `wait_*` runs on the engine loop."""

    runtime: Runtime
    scheduler: Scheduler
    store: Store
    runs: RunsAPI


    def _result_futures(self, run_ids: list[str]) -> list[asyncio.Future[Result[Any]]]:
        """A future per run, resolved once it is final and durable.

        Runs already finished are read from the store in one query, not one per id.
        """
        loop = self.runtime.loop
        futures: list[asyncio.Future[Result[Any]]] = []
        stored: dict[str, asyncio.Future[Result[Any]]] = {}
        for run_id in run_ids:
            fut: asyncio.Future[Result[Any]] = loop.create_future()
            futures.append(fut)
            if not self.scheduler.on_final(run_id, partial(_settle, fut)):
                stored[run_id] = fut
        ids = list(stored)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            _, rows = self.store.select(
                "SELECT id, task_id, status, output, error FROM runs WHERE id IN "
                f"({', '.join('?' * len(chunk))})", tuple(chunk))
            for run_id, task_id, status, output, error in rows:
                fut = stored.pop(run_id)
                st = RunStatus(status)
                if st in FINAL:
                    fut.set_result(Result(run_id, task_id, st, output, loads(error)))
                else:
                    fut.set_exception(EngineError(
                        f"run {run_id} is not final and is owned by another kernel; poll "
                        "runs.retrieve() to follow it"))
        for run_id, fut in stored.items():
            fut.set_exception(RunNotFoundError(f"no run with id {run_id!r}"))
        return futures

    def _parked(self, scope: AttemptScope | None) -> RunState | None:
        if scope is None or scope.engine is not self:
            return None
        run: RunState | None = self.scheduler.active.get(scope.ctx.run.id)
        return run

    async def _wait_one(self, run_id: str, scope: AttemptScope | None) -> Result[Any]:
        (fut,) = self._result_futures([run_id])
        parent = self._parked(scope)
        return await (self.scheduler.park(parent, fut) if parent is not None else fut)

    async def _wait_many(self, run_ids: list[str], scope: AttemptScope | None) -> list[Result[Any]]:
        gathered = asyncio.gather(*self._result_futures(run_ids))
        parent = self._parked(scope)
        return list(await (self.scheduler.park(parent, gathered) if parent is not None
                           else gathered))

    async def result_async(self, run_id: str) -> Result[Any]:
        scope = CURRENT.get()
        return await self.runtime.run(self._wait_one, run_id, scope)

    async def results_async(self, run_ids: list[str]) -> list[Result[Any]]:
        scope = CURRENT.get()
        return await self.runtime.run(self._wait_many, run_ids, scope)

    def _block(self, fn: Any, *args: Any, timeout: float | None) -> Any:
        if self.runtime.in_loop():
            raise EngineError(
                "handle.wait() blocks, and this code runs on the engine loop (an async task body "
                "or hook): use `await handle` instead")
        started: list[asyncio.Task[Any]] = []

        async def _watched() -> Any:
            task = asyncio.ensure_future(fn(*args))
            started.append(task)
            return await task

        fut = self.runtime.submit(_watched)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if CURRENT.get() is not None and started:
                # A sync body: unwind the engine side before it goes on, so its parked run takes
                # its queue slot back first and never executes beside its queue's limit.
                done = self.runtime.call(_unwind, started)
                if not done.cancelled() and done.exception() is None:
                    return done.result()  # it finished just as the time ran out
            fut.cancel()
            raise RunWaitTimeoutError(
                f"not final after {timeout}s; the run goes on (wait again, or cancel it)"
            ) from None

    def wait_result(self, run_id: str, timeout: float | None = None) -> Result[Any]:
        return self._block(self._wait_one, run_id, CURRENT.get(), timeout=timeout)  # type: ignore[no-any-return]

    def wait_results(self, run_ids: list[str], timeout: float | None = None) -> list[Result[Any]]:
        return self._block(self._wait_many, run_ids, CURRENT.get(), timeout=timeout)  # type: ignore[no-any-return]

    def status_of(self, run_id: str) -> RunStatus:
        run = self.scheduler.active.get(run_id)
        if run is not None:
            return run.status
        row = self.runs.row(run_id)
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return RunStatus(row["status"])


async def _unwind(started: list[asyncio.Task[Any]]) -> asyncio.Task[Any]:
    """Cancel a timed-out wait's task and return it once it has finished unwinding."""
    task = started[0]
    task.cancel()
    await asyncio.wait([task])
    return task
