"""nbtasks: Trigger.dev-style background tasks inside a Jupyter kernel.

>>> import nbtasks
>>> @nbtasks.task(id="hello-world")                      # doctest: +SKIP
... async def hello_world(payload, ctx):
...     return {"echo": payload["message"]}
>>> handle = hello_world.trigger({"message": "hi"})       # returns at once
>>> handle.wait().output
{'echo': 'hi'}

`import nbtasks` loads neither pandas nor ipywidgets; `dashboard()` and the DataFrame methods
import them when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import ManualClock, RealClock
from ._configure import configure
from ._configure import default_engine as _default_engine
from ._context import TaskContext, logger, metadata, tags
from ._context import current_scope as _current_scope
from ._engine import Engine
from ._errors import (
    AbortTaskRunError,
    ConfigurationError,
    EngineError,
    KernelRestartError,
    MaxDurationExceededError,
    NbtasksError,
    OutOfMemoryError,
    OutputSerializationError,
    PayloadSerializationError,
    PayloadValidationError,
    RunNotFoundError,
    RunWaitTimeoutError,
    StoreError,
    SubtaskUnwrapError,
    TaskRunError,
    UnknownTaskError,
    WaitTimeoutError,
    WorkerCrashedError,
)
from ._events import RunEvent
from ._handles import BatchHandle, BatchResult, Result, RunHandle
from ._models import MACHINES, Attempt, QueueOptions, RetryOptions, Run
from ._prepare import idempotency_key as _idempotency_key
from ._queues_api import QueuesAPI, queue
from ._retry import next_delay
from ._runs import RunList, RunsAPI
from ._status import RunStatus
from ._tasks import DEFAULT_REGISTRY as _DEFAULT_REGISTRY
from ._tasks import BatchItem, Task, schema_task, task
from ._tokens import WaitResult, WaitToken
from ._wait import WaitAPI
from .retry import retry

if TYPE_CHECKING:
    import ipywidgets

_DEFAULT_REGISTRY.owner = _default_engine


def _engine_in_use() -> Engine:
    """Inside a run, the run's own engine (an explicit Engine's too); else the default one."""
    scope = _current_scope()
    if scope is not None and isinstance(scope.engine, Engine):
        return scope.engine
    return _default_engine()


runs = RunsAPI(_engine_in_use)
wait = WaitAPI(_engine_in_use)
queues = QueuesAPI(_engine_in_use)


class _Tasks:
    """`nbtasks.tasks.trigger("task-id", payload)`: trigger by id (Trigger.dev's `tasks`)."""

    def _task(self, task_id: str) -> Task[Any, Any]:
        eng = _engine_in_use()
        return Task(eng.registry.require(task_id), eng.registry)

    def trigger(self, task_id: str, payload: Any = None, **options: Any) -> RunHandle[Any]:
        return self._task(task_id).trigger(payload, **options)

    async def trigger_and_wait(self, task_id: str, payload: Any = None, **options: Any) -> Result[Any]:
        return await self._task(task_id).trigger_and_wait(payload, **options)

    def batch_trigger(self, task_id: str, items: list[Any], **options: Any) -> BatchHandle[Any]:
        return self._task(task_id).batch_trigger(items, **options)

    async def batch_trigger_and_wait(self, task_id: str, items: list[Any],
                                     **options: Any) -> BatchResult[Any]:
        return await self._task(task_id).batch_trigger_and_wait(items, **options)

    async def trigger_async(self, task_id: str, payload: Any = None,
                            **options: Any) -> RunHandle[Any]:
        return await self._task(task_id).trigger_async(payload, **options)


class _IdempotencyKeys:
    """`nbtasks.idempotency_keys.create(key, scope="run"|"attempt"|"global")`."""

    @staticmethod
    def create(key: str | list[str], scope: str = "run") -> str:
        return _idempotency_key(key, scope)


tasks = _Tasks()
idempotency_keys = _IdempotencyKeys()


def dashboard(engine: Engine | None = None, **options: Any) -> ipywidgets.Widget:
    """The live run dashboard widget (imports ipywidgets on first use)."""
    from .notebook.dashboard import Dashboard

    return Dashboard(engine or _default_engine(), **options)


def __getattr__(name: str) -> Any:
    if name == "schedules":
        from ._schedules import schedules

        return schedules
    if name == "testing":
        from . import testing

        return testing
    raise AttributeError(f"module 'nbtasks' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = (
    "MACHINES",
    "AbortTaskRunError",
    "Attempt",
    "BatchHandle",
    "BatchItem",
    "BatchResult",
    "ConfigurationError",
    "Engine",
    "EngineError",
    "KernelRestartError",
    "ManualClock",
    "MaxDurationExceededError",
    "NbtasksError",
    "OutOfMemoryError",
    "OutputSerializationError",
    "PayloadSerializationError",
    "PayloadValidationError",
    "QueueOptions",
    "QueuesAPI",
    "RealClock",
    "Result",
    "RetryOptions",
    "Run",
    "RunEvent",
    "RunHandle",
    "RunList",
    "RunNotFoundError",
    "RunStatus",
    "RunWaitTimeoutError",
    "RunsAPI",
    "StoreError",
    "SubtaskUnwrapError",
    "Task",
    "TaskContext",
    "TaskRunError",
    "UnknownTaskError",
    "WaitAPI",
    "WaitResult",
    "WaitTimeoutError",
    "WaitToken",
    "WorkerCrashedError",
    "configure",
    "dashboard",
    "idempotency_keys",
    "logger",
    "metadata",
    "next_delay",
    "queue",
    "queues",
    "retry",
    "runs",
    "schedules",
    "schema_task",
    "tags",
    "task",
    "tasks",
    "wait",
)
