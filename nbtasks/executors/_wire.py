"""What crosses between the kernel and a worker: one attempt out, one outcome back.

Functions (the task's run and hooks, the global hooks) travel with cloudpickle, so closures
defined in a notebook cell (`__main__`) work; they are pickled at each attempt, so a run sees
the notebook's values as they were when the attempt started, as an in-kernel run would. Payload
and output stay JSON strings. The context's CancelSignal is a threading.Event that can't be
pickled: the worker builds a fresh context around the same frozen snapshots.

Pickles only ever go to our own workers over a pipe (or to the user's Dask cluster, which
pickles everything anyway); nothing read from the store is unpickled.
"""

from __future__ import annotations

import io
import pickle
import time
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle

from .._context import AttemptScope, CancelSignal, MachineInfo, TaskContext
from .._errors import OutOfMemoryError, TaskRunError, WorkerCrashedError
from .._lifecycle import AttemptOutcome, AttemptPlan, GlobalHooks, error_record
from .._models import RetryOptions
from .._retry import decide
from .._runs import RunsAPI
from .._status import RunStatus
from .._tasks import Task, TaskDefinition, _is_async
from .._wait import WaitAPI
from . import _remote


@dataclass(slots=True)
class Job:
    """One attempt, as a worker receives it."""

    defn: TaskDefinition
    hooks: GlobalHooks
    retry: RetryOptions | None
    payload_json: str
    ctx: tuple[Any, ...]  # TaskContext's frozen parts: task, run, attempt, queue, machine
    metadata: dict[str, Any]
    tags: list[str]


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with the kernel's engine-bound objects replaced by worker-side stubs."""

    def reducer_override(self, obj: Any) -> Any:
        from .. import _Tasks
        from .._engine import Engine

        if isinstance(obj, Task):
            return _remote.task_stub, (obj.id, obj.definition.schema)
        if isinstance(obj, WaitAPI | _remote.RemoteWait):
            return _remote.wait_stub, ()
        if isinstance(obj, RunsAPI | _remote.RemoteRuns):
            return _remote.runs_stub, ()
        if isinstance(obj, _Tasks | _remote.RemoteTasks):
            return _remote.tasks_stub, ()
        if isinstance(obj, Engine):
            return _remote.engine_stub, ()
        return super().reducer_override(obj)


def dump_job(plan: AttemptPlan, scope: AttemptScope) -> bytes:
    """Pickle an attempt for a worker; raises (pickle.PicklingError, TypeError...) if it can't."""
    c = plan.ctx
    job = Job(plan.defn, plan.hooks, plan.retry, plan.payload_json,
              (c.task, c.run, c.attempt, c.queue, c.machine), scope.metadata, scope.tags)
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(job)
    return buf.getvalue()


def load_job(blob: bytes) -> Job:
    job = pickle.loads(blob)
    if not isinstance(job, Job):
        raise TypeError(f"expected a Job, got {type(job).__name__}")
    return job


def _memory_errors_as_oom(defn: TaskDefinition, machine: MachineInfo) -> TaskDefinition:
    """A MemoryError raised by the run is the machine running out: report it as such."""
    run = defn.run

    def oom(exc: MemoryError) -> OutOfMemoryError:
        return OutOfMemoryError(f"the run ran out of memory on the {machine.name} machine "
                                f"({machine.memory:g} GB): {exc or 'MemoryError'}")

    if _is_async(run):
        async def run_async(payload: Any, ctx: Any) -> Any:
            try:
                return await run(payload, ctx)
            except MemoryError as exc:
                raise oom(exc) from exc

        return replace(defn, run=run_async)

    def run_sync(payload: Any, ctx: Any) -> Any:
        try:
            return run(payload, ctx)
        except MemoryError as exc:
            raise oom(exc) from exc

    return replace(defn, run=run_sync)


async def run_job(job: Job, remote: _remote.RemoteEngine, call_sync: Any,
                  signal: CancelSignal | None = None) -> dict[str, Any]:
    """Run one attempt's whole lifecycle in this worker; returns the outcome message."""
    from .._lifecycle import run_attempt

    task, run, attempt, queue, machine = job.ctx
    ctx = TaskContext(task, run, attempt, queue, machine, signal=signal or CancelSignal())
    scope = AttemptScope(ctx, remote, dict(job.metadata), list(job.tags), remote)
    plan = AttemptPlan(_memory_errors_as_oom(job.defn, ctx.machine), job.payload_json, ctx,
                       job.retry, job.hooks, time.time)
    outcome = await run_attempt(plan, scope, call_sync)
    return {"ok": outcome.ok, "output_json": outcome.output_json, "error": outcome.error,
            "retry_at": outcome.retry_at, "status": outcome.status.value,
            "machine": outcome.machine, "now": time.time()}


def outcome_from(message: dict[str, Any], plan: AttemptPlan) -> AttemptOutcome:
    """The worker's outcome, its retry time moved from the worker's clock to the engine's."""
    retry_at = message["retry_at"]
    if retry_at is not None:
        retry_at = plan.now() + (retry_at - message["now"])
    return AttemptOutcome(bool(message["ok"]), message["output_json"], message["error"],
                          retry_at, RunStatus(message["status"]), message["machine"])


def failed_outcome(plan: AttemptPlan, err: TaskRunError, *, retry: bool = True) -> AttemptOutcome:
    """An attempt the kernel ends for the worker (it died, ran out of memory, couldn't start).

    The worker that would run handle_error, on_failure and cleanup is gone, so the default
    retry policy decides, as Trigger.dev's platform does for a crashed machine.
    """
    decision = decide(plan.retry, plan.ctx.attempt.number, err, plan.now(), None,
                      no_retry=not retry, machine=plan.ctx.machine.name)
    record = error_record(decision.error)
    record["traceback"] = ""
    crashed = isinstance(err, WorkerCrashedError | OutOfMemoryError)
    return AttemptOutcome(False, error=record, retry_at=decision.retry_at,
                          status=RunStatus.CRASHED if crashed else RunStatus.FAILED,
                          machine=decision.machine)


def result_to_wire(result: Any) -> _remote.ResultWire:
    err = result.error
    record = None if err is None else {"type": err.type_name, "message": err.message,
                                       "traceback": err.traceback}
    return (result.id, result.task_id, result.status.value, result._output_json, record)
