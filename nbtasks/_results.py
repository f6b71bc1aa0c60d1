"""Waiting for runs to finish: the part of the Engine behind `wait()`, `await` and Results.

A waiter hears of a run only once its final state is committed (the scheduler's after-commit
callbacks); a waiter inside a run parks that run, so its queue slot goes back while it waits.
Runs already finished are read from the store, many ids per query.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ._context import CURRENT, AttemptScope
from ._errors import EngineError, RunNotFoundError, RunWaitTimeoutError
from ._handles import Result, check_wait_timeout
from ._parking import parked
from ._payload import loads
from ._runstate import RunState
from ._status import FINAL, RunStatus

if TYPE_CHECKING:
    from ._runs import RunsAPI
    from ._runtime import Runtime
    from ._scheduler import Scheduler
    from .stores import Store


#: Ids per store query when answering waits for runs no longer in memory, one query per turn.
LOOKUP_SLICE = 100


def _result_of(run: RunState) -> Result[Any]:
    return Result(run.id, run.task_id, run.status, run.output_json, run.error)


def _stored_answer(run_id: str, task_id: str, status: str, output: str | None,
                   error: str | None) -> Result[Any] | None:
    """A stored row's Result if the run is final (so durable), else None."""
    st = RunStatus(status)
    return Result(run_id, task_id, st, output, loads(error)) if st in FINAL else None


def _fill(done: list[Result[Any] | None], waited: list[Result[Any]]) -> None:
    """Put the results waited for into the gaps of `done`, in order."""
    it = iter(waited)
    for i, r in enumerate(done):
        if r is None:
            done[i] = next(it)


class _Collector:
    """Results of several runs into one future, in order; the first error fails it."""

    __slots__ = ("fut", "left", "results", "single")

    def __init__(self, fut: asyncio.Future[Any], n: int, single: bool) -> None:
        self.fut = fut
        self.results: list[Any] = [None] * n
        self.left = n
        self.single = single
        if n == 0:
            fut.set_result([])

    def put(self, i: int, answer: Result[Any] | BaseException) -> None:
        fut = self.fut
        if fut.done():
            return
        if isinstance(answer, BaseException):
            fut.set_exception(answer)
            return
        self.results[i] = answer
        self.left -= 1
        if self.left == 0:
            fut.set_result(self.results[0] if self.single else self.results)

    def put_run(self, i: int, run: RunState) -> None:
        self.put(i, _result_of(run) if run.withdrawn is None else run.withdrawn)


class ResultWaiting:
    """Mixed into Engine; every method but the sync `wait_*` runs on the engine loop."""

    closed: bool
    runtime: Runtime
    scheduler: Scheduler
    store: Store
    runs: RunsAPI
    _admitting: dict[str, RunState]
    _lookups: dict[str, list[Callable[[Result[Any] | BaseException], None]]]

    def _collect(self, run_ids: list[str], single: bool) -> asyncio.Future[Any]:
        """One future for the results of `run_ids`, in order, once each is final and durable.

        Active runs call back when they finish; the others are read from the store, and those
        reads are gathered until the loop next turns, so thousands of `await handle` arriving
        together cost a few queries. One future for the lot, not one per run.
        """
        collector = _Collector(self.runtime.loop.create_future(), len(run_ids), single)
        self._deliver(run_ids, collector.put_run, collector.put)
        return collector.fut

    def _deliver(self, run_ids: list[str], put_run: Callable[[int, RunState], None],
                 put: Callable[[int, Result[Any] | BaseException], None]) -> None:
        """For each of `run_ids` (by its index), once it is final and durable: `put_run` with an
        active run's state, or `put` with the Result (or error) of one read from the store."""
        loop = self.runtime.loop
        lookups = self._lookups
        for i, run_id in enumerate(run_ids):
            if not self.scheduler.on_final(run_id, partial(put_run, i)):
                if not lookups:
                    loop.call_soon(self._look_up)
                lookups.setdefault(run_id, []).append(partial(put, i))

    def _look_up(self) -> None:
        """Answer the gathered store reads, one query of up to LOOKUP_SLICE ids per loop turn
        (500 answered at once held the loop for milliseconds)."""
        stored = self._lookups
        chunk = list(itertools.islice(stored, LOOKUP_SLICE))
        _, rows = self.store.select(
            "SELECT id, task_id, status, output, error FROM runs WHERE id IN "
            f"({', '.join('?' * len(chunk))})", tuple(chunk))
        for run_id, task_id, status, output, error in rows:
            answer = _stored_answer(run_id, task_id, status, output, error)
            for put in stored.pop(run_id):
                put(answer if answer is not None else EngineError(
                    f"run {run_id} is not final and is owned by another kernel; poll "
                    "runs.retrieve() to follow it"))
        for run_id in chunk:
            for put in stored.pop(run_id, ()):
                put(RunNotFoundError(f"no run with id {run_id!r}"))
        if stored:
            self.runtime.loop.call_soon(self._look_up)

    def finished_results(self, run_ids: list[str]) -> list[Result[Any] | None]:
        """`finished_result` for many runs, from any thread: the runs this engine no longer
        holds are read in one query per 500 ids, so waiting on a batch that has already
        finished costs no trip to the engine thread and no work on its loop."""
        if self.closed:
            return [None] * len(run_ids)
        active, admitting = self.scheduler.active, self._admitting
        out: list[Result[Any] | None] = []
        unknown: dict[str, int] = {}
        for i, run_id in enumerate(run_ids):
            run = active.get(run_id)
            if run is not None:
                out.append(_result_of(run) if run.durable else None)
            else:
                out.append(None)
                if run_id not in admitting:  # handed over, not yet taken: still running
                    unknown[run_id] = i
        ids = list(unknown)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            _, rows = self.store.select(
                "SELECT id, task_id, status, output, error FROM runs WHERE id IN "
                f"({', '.join('?' * len(chunk))})", tuple(chunk))
            for row in rows:
                out[unknown[row[0]]] = _stored_answer(*row)
        return out

    def _parked(self, scope: AttemptScope | None) -> RunState | None:
        if scope is None or scope.engine is not self:
            return None
        run: RunState | None = self.scheduler.active.get(scope.ctx.run.id)
        return run

    def _wait_one(self, run_id: str, scope: AttemptScope | None) -> Awaitable[Result[Any]]:
        """The result future itself, or (inside a run) the park that waits on it."""
        fut: asyncio.Future[Result[Any]] = self._collect([run_id], single=True)
        parent = self._parked(scope)
        return self.scheduler.park(parent, fut) if parent is not None else fut

    def _wait_many(self, run_ids: list[str],
                   scope: AttemptScope | None) -> Awaitable[list[Result[Any]]]:
        fut: asyncio.Future[list[Result[Any]]] = self._collect(run_ids, single=False)
        parent = self._parked(scope)
        return self.scheduler.park(parent, fut) if parent is not None else fut

    def finished_result(self, run_id: str) -> Result[Any] | None:
        """The Result of a run that is final and durable, or None; from any thread, cheaply.

        No trip to the engine thread: an active run is looked at in place (a dict read; a run
        marked `durable` is never changed again), and one this engine no longer holds is one
        primary-key read on this thread's own store connection. A final row in the file is
        durable by definition; a run not final yet, or unknown, gives None.
        """
        if self.closed:
            return None  # the wait itself says the engine is closed
        run = self.scheduler.active.get(run_id)
        if run is not None:
            return _result_of(run) if run.durable else None
        _, rows = self.store.select(
            "SELECT task_id, status, output, error FROM runs WHERE id = ?", (run_id,))
        if not rows:
            return None
        task_id, status, output, error = rows[0]
        st = RunStatus(status)
        if st not in FINAL:
            return None
        return Result(run_id, task_id, st, output, loads(error))

    async def result_async(self, run_id: str) -> Result[Any]:
        done = self.finished_result(run_id)
        if done is not None:
            return done
        scope = CURRENT.get()
        return await self.runtime.run(self._wait_one, run_id, scope)

    async def results_async(self, run_ids: list[str]) -> list[Result[Any]]:
        done = self.finished_results(run_ids)
        pending = [run_id for run_id, r in zip(run_ids, done, strict=True) if r is None]
        if pending:
            scope = CURRENT.get()
            _fill(done, await self.runtime.run(self._wait_many, pending, scope))
        return done  # type: ignore[return-value]

    def _block(self, fn: Any, *args: Any, timeout: float | None) -> Any:
        if self.runtime.in_loop():
            raise EngineError(
                "handle.wait() blocks, and this code runs on the engine loop (an async task body "
                "or hook): use `await handle` instead")
        timeout = check_wait_timeout(timeout)
        started: list[asyncio.Task[Any]] = []

        async def _watched() -> Any:
            task = asyncio.ensure_future(fn(*args))
            started.append(task)
            return await task

        fut = self.runtime.submit(_watched)
        try:
            with parked():  # a sync body's thread waits: the pool may start another meanwhile
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
        done = self.finished_result(run_id)
        if done is not None:
            return done
        return self._block(self._wait_one, run_id, CURRENT.get(), timeout=timeout)  # type: ignore[no-any-return]

    def wait_results(self, run_ids: list[str], timeout: float | None = None) -> list[Result[Any]]:
        timeout = check_wait_timeout(timeout)
        done = self.finished_results(run_ids)
        pending = [run_id for run_id, r in zip(run_ids, done, strict=True) if r is None]
        if pending:
            waited: list[Result[Any]] = self._block(self._wait_many, pending, CURRENT.get(),
                                                    timeout=timeout)
            _fill(done, waited)
        return done  # type: ignore[return-value]

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
