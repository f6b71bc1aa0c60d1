"""What a trigger gives back: RunHandle, BatchHandle, and the Result of a finished run.

>>> handle = hello_world.trigger({"message": "hi"})      # doctest: +SKIP
>>> handle.status                                         # live
>>> result = handle.wait(timeout=10)                      # blocks; or `await handle` in a cell
>>> result.ok, result.output, result.unwrap()
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import ConfigurationError, SubtaskUnwrapError, TaskRunError, error_from_record
from ._payload import loads
from ._status import FINAL, RunStatus

if TYPE_CHECKING:
    from ._engine import Engine
    from ._models import Run
    from ._runstate import RunState

OutT = TypeVar("OutT")

#: An enum member read through its class is a descriptor call in Python 3.11: the Result of
#: every wait reads this one, so it is read once here.
_COMPLETED = RunStatus.COMPLETED


class Result(Generic[OutT]):
    """A final run's outcome: `ok` with `output`, or not with `error`."""

    __slots__ = ("_output", "_output_json", "error", "id", "status", "task_id")

    def __init__(self, run_id: str, task_id: str, status: RunStatus, output_json: str | None,
                 error: dict[str, Any] | None) -> None:
        self.id = run_id
        self.task_id = task_id
        self.status = status
        self._output_json = output_json
        self._output: Any = _UNSET
        self.error: TaskRunError | None = (
            None if status is _COMPLETED
            else error_from_record(error or {"type": status.value,
                                             "message": _STATUS_MESSAGES.get(status, status.value)})
        )

    @property
    def ok(self) -> bool:
        return self.status is _COMPLETED

    @property
    def output(self) -> OutT | None:
        if self._output is _UNSET:
            self._output = loads(self._output_json)
        return self._output  # type: ignore[no-any-return]

    def unwrap(self) -> OutT:
        """The output, or SubtaskUnwrapError("Error in <task id>: <message>")."""
        if self.error is not None:
            raise SubtaskUnwrapError(self.task_id, self.id, self.error)
        return self.output  # type: ignore[return-value]

    def __repr__(self) -> str:
        if self.ok:
            return f"Result(ok, id={self.id!r}, task={self.task_id!r}, output={self.output!r})"
        return f"Result({self.status.value}, id={self.id!r}, task={self.task_id!r}, error={self.error!s})"

    def _repr_html_(self) -> str:
        from .notebook.display import result_html

        return result_html(self)


_UNSET: Any = object()

#: Past this a wait is as good as for ever, and the OS's timers can't hold it (OverflowError).
_FOREVER = threading.TIMEOUT_MAX / 2


def check_wait_timeout(timeout: Any) -> float | None:
    """A wait's timeout in seconds, or None for no limit; ConfigurationError if it makes no
    sense. Infinity (or anything past what a timer can hold) means no limit."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"wait: timeout must be seconds (a number) or None, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ConfigurationError(f"wait: timeout must be >= 0 seconds or None, got {timeout!r}")
    if timeout >= _FOREVER:
        return None
    return float(timeout)

#: What a run that ended without an error of its own reports.
_STATUS_MESSAGES = {
    RunStatus.CANCELED: "the run was cancelled",
    RunStatus.EXPIRED: "the run expired: its ttl ran out while it was queued",
    RunStatus.INTERRUPTED: "the run was interrupted",
}


class RunHandle(Generic[OutT]):
    """Returned at once by trigger(). Live `status`; `wait()`, `cancel()`, `replay()`; awaitable.

    Once the run is known final and durable its Result is kept on the handle: `wait()`,
    `await handle` and `status` then answer from it, with no trip to the engine thread.
    """

    __slots__ = ("_engine", "_result", "_run", "id", "is_cached", "task_id")

    def __init__(self, engine: Engine, run_id: str, task_id: str, is_cached: bool = False,
                 run: RunState | None = None) -> None:
        self._engine = engine
        self.id = run_id
        self.task_id = task_id
        self.is_cached = is_cached
        #: The engine's live state of the run, when the engine handed it over: read from this
        #: thread only once `durable` is set, after which the engine never changes it again.
        self._run = run
        self._result: Result[OutT] | None = None

    def _finished(self) -> Result[OutT] | None:
        if self._result is None:
            run = self._run
            if run is not None and run.durable:
                self._result = Result(run.id, run.task_id, run.status, run.output_json, run.error)
                self._run = None  # the Result is all a finished run's handle needs
        return self._result

    @property
    def status(self) -> RunStatus:
        done = self._finished()
        if done is not None:
            return done.status
        run = self._run
        if run is not None:
            return run.status
        finished = getattr(self._engine, "finished_result", None)  # not on a worker's proxy
        if finished is not None:
            self._result = finished(self.id)
            if self._result is not None:
                return self._result.status
        return self._engine.status_of(self.id)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    def retrieve(self) -> Run:
        return self._engine.runs.retrieve(self.id)

    def wait(self, timeout: float | None = None) -> Result[OutT]:
        """Block until the run is final (RunWaitTimeoutError after `timeout` seconds).

        A finished run answers at once, even with `timeout=0`. `timeout=None` or `math.inf`
        waits for ever; a negative or NaN timeout is a ConfigurationError.
        """
        seconds = check_wait_timeout(timeout)
        done = self._finished()
        if done is not None:
            return done
        self._result = self._engine.wait_result(self.id, seconds)
        return self._result

    def __await__(self) -> Generator[Any, None, Result[OutT]]:
        done = self._finished()
        if done is not None:
            return done
        soon = getattr(self._engine, "result_soon", None)  # not on a worker's proxy
        waiting = soon(self.id) if soon is not None else self._engine.result_async(self.id)
        self._result = yield from waiting.__await__()
        return self._result

    def cancel(self) -> bool:
        """Cancel if not final; False (a no-op) when it already was."""
        return self._engine.runs.cancel(self.id)

    def replay(self, payload: Any = _UNSET) -> RunHandle[OutT]:
        """A new run of the same task: the same payload, or `payload` when given."""
        if payload is _UNSET:  # runs.replay has its own "not given" marker
            return self._engine.runs.replay(self.id)
        return self._engine.runs.replay(self.id, payload)

    def __repr__(self) -> str:
        cached = ", cached" if self.is_cached else ""
        return f"<RunHandle {self.id} task={self.task_id!r} {self.status.value}{cached}>"

    def _ipython_display_(self) -> None:
        from .notebook.display import display_handle

        display_handle(self)


class BatchResult(Generic[OutT]):
    """`batch_trigger_and_wait`'s answer: `runs` in item order. Iterable."""

    __slots__ = ("id", "runs")

    def __init__(self, batch_id: str, runs: list[Result[OutT]]) -> None:
        self.id = batch_id
        self.runs = runs

    def __iter__(self) -> Iterator[Result[OutT]]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, i: int) -> Result[OutT]:
        return self.runs[i]

    def __repr__(self) -> str:
        ok = sum(r.ok for r in self.runs)
        return f"<BatchResult {self.id}: {ok}/{len(self.runs)} ok>"

    def _repr_html_(self) -> str:
        from .notebook.display import batch_html

        return batch_html(self.id, list(self.runs))


class BatchHandle(Generic[OutT]):
    """`batch_trigger`'s answer: one RunHandle per item, in order. Awaitable for a BatchResult."""

    __slots__ = ("_engine", "id", "runs")

    def __init__(self, engine: Engine, batch_id: str, runs: list[RunHandle[OutT]]) -> None:
        self._engine = engine
        self.id = batch_id
        self.runs = runs

    def __iter__(self) -> Iterator[RunHandle[OutT]]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def wait(self, timeout: float | None = None) -> BatchResult[OutT]:
        """Block until every run is final; in a notebook cell a progress bar shows the way."""
        from .notebook.progress import batch_progress

        seconds = check_wait_timeout(timeout)
        handles = self.runs
        # Runs whose handles hold their finished state answer from it: a batch that has
        # already finished costs no store read and no trip to the engine thread.
        done: list[Result[OutT] | None] = [h._finished() for h in handles]
        with batch_progress(self._engine, self.id, [h.id for h in handles]):
            missing = [h.id for h, r in zip(handles, done, strict=True) if r is None]
            if missing:
                waited = iter(self._engine.wait_results(missing, seconds))
                done = [r if r is not None else next(waited) for r in done]
        return BatchResult(self.id, done)  # type: ignore[arg-type]

    def __await__(self) -> Generator[Any, None, BatchResult[OutT]]:
        async def _all() -> BatchResult[OutT]:
            from .notebook.progress import batch_progress

            ids = [h.id for h in self.runs]
            with batch_progress(self._engine, self.id, ids):
                results = await self._engine.results_async(ids)
            return BatchResult(self.id, results)

        return _all().__await__()

    def __repr__(self) -> str:
        return f"<BatchHandle {self.id} with {len(self.runs)} runs>"

    def _repr_html_(self) -> str:
        from .notebook.display import batch_handle_html

        return batch_handle_html(self)

    def _ipython_display_(self) -> None:
        """A cell's last value: live counts while the batch runs (as a RunHandle's line is)."""
        from .notebook.display import display_batch

        display_batch(self)
