"""What crosses between the kernel and a worker: one attempt out, one outcome back.

Functions (the task's run and hooks, the global hooks) travel with cloudpickle, so closures
defined in a notebook cell (`__main__`) work; a run sees the notebook's values as they were
when the attempt started, as an in-kernel run would. They are pickled again for an attempt
unless nothing they capture can have changed since the last one (`_codecache`). The
pickle is named by its hash: a worker that already holds those exact bytes is sent only the hash
and reuses the functions it loaded (`load_code`), so a warm worker doesn't unpickle an unchanged
task per run. Payload and output stay JSON strings. Everything else in a `Job` is plain tuples
(pickling the context's frozen dataclasses and a pydantic model cost more than the rest of the
message). The context's CancelSignal is a threading.Event that can't be pickled: the worker
builds a fresh context around the same frozen snapshots.

Pickles only ever go down, to our own workers over a pipe (or to the user's Dask cluster, which
pickles everything anyway); nothing read from the store, a worker's pipe or a Dask topic is
unpickled: what comes back up (logs, requests, the outcome) is JSON. The kernel's size limits
(`configure(limits=...)`) travel with each job, so a worker holds an output to the same limit.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, NamedTuple

import cloudpickle

from .._context import (
    AttemptInfo,
    AttemptScope,
    CancelSignal,
    MachineInfo,
    QueueInfo,
    RunInfo,
    TaskContext,
    TaskInfo,
)
from .._errors import OutOfMemoryError, TaskRunError, WorkerCrashedError
from .._lifecycle import AttemptOutcome, AttemptPlan, GlobalHooks, SyncCaller, error_record
from .._models import RetryOptions
from .._payload import LIMITS, Limits
from .._retry import decide
from .._runs import RunsAPI
from .._status import RunStatus
from .._tasks import Task, TaskDefinition, _is_async
from .._wait import WaitAPI
from . import _remote
from ._codecache import Fingerprint, PickleCache, Uncacheable


class Job(NamedTuple):
    """One attempt, as a worker receives it. Only `code` needs cloudpickle; the rest is data."""

    code: bytes | None  # cloudpickled (run, schema, task hooks, global hooks); None: see hash
    code_hash: bytes  # of those bytes: what a worker caches the loaded functions under
    task_id: str
    retry: dict[str, Any] | None  # RetryOptions, dumped
    payload_json: str
    ctx: tuple[tuple[Any, ...], ...]  # TaskContext's frozen parts, each as its fields' values
    metadata: dict[str, Any]
    tags: list[str]
    limits: tuple[int, ...]  # the kernel's configure(limits=...), in `Limits` field order


#: The size limits' names, in the order `Job.limits` carries them.
_LIMIT_FIELDS = tuple(f.name for f in fields(Limits))
#: TaskContext's frozen parts, in the order `Job.ctx` carries them.
_CTX_PARTS = (TaskInfo, RunInfo, AttemptInfo, QueueInfo, MachineInfo)
_CTX_FIELDS = tuple(tuple(f.name for f in fields(cls)) for cls in _CTX_PARTS)
#: How many tasks' loaded functions a worker keeps (and the kernel believes it keeps).
CODE_CACHE = 64


class CodeCache:
    """Loaded functions by the hash of their pickle, oldest out first past `CODE_CACHE`.

    The kernel keeps one per pool worker (only hashes: what it has sent that worker), the
    worker one (the functions). Both add on the same events, in the same order, so they agree;
    should they ever not, the worker says so and the kernel sends the bytes again.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: bytes) -> Any:
        with self.lock:
            return self.entries.get(key)

    def __contains__(self, key: bytes) -> bool:
        return key in self.entries

    def add(self, key: bytes, value: Any) -> None:
        with self.lock:
            if key not in self.entries:
                self.entries[key] = value
                while len(self.entries) > CODE_CACHE:
                    self.entries.popitem(last=False)

    def discard(self, key: bytes) -> None:
        with self.lock:
            self.entries.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


#: This process's loaded task code, when it is a worker.
LOADED = CodeCache()


def _stubs() -> dict[type, Callable[[Any], tuple[Any, ...]]]:
    from .. import _Tasks
    from .._engine import Engine

    return {
        Task: lambda t: (_remote.task_stub, (t.id, t.definition.schema)),
        WaitAPI: lambda _: (_remote.wait_stub, ()),
        _remote.RemoteWait: lambda _: (_remote.wait_stub, ()),
        RunsAPI: lambda _: (_remote.runs_stub, ()),
        _remote.RemoteRuns: lambda _: (_remote.runs_stub, ()),
        _Tasks: lambda _: (_remote.tasks_stub, ()),
        _remote.RemoteTasks: lambda _: (_remote.tasks_stub, ()),
        Engine: lambda _: (_remote.engine_stub, ()),
    }


_STUBS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
_PICKLES = PickleCache()  # the kernel's: unchanged task code is pickled once


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with the kernel's engine-bound objects replaced by worker-side stubs."""

    def reducer_override(self, obj: Any) -> Any:
        stub = _STUBS.get(type(obj))
        if stub is None and isinstance(obj, Task):  # a subclass
            stub = _STUBS[Task]
        if stub is not None:
            return stub(obj)
        return super().reducer_override(obj)


def dump_job(plan: AttemptPlan, scope: AttemptScope) -> Job:
    """An attempt for a worker; raises (pickle.PicklingError, TypeError...) if its code can't go."""
    if not _STUBS:
        _STUBS.update(_stubs())
    defn, hooks, c = plan.defn, plan.hooks, plan.ctx
    functions = (defn.run, defn.schema, defn.hooks,
                 (hooks.on_start, hooks.on_success, hooks.on_failure))
    fingerprint: Fingerprint | None = Fingerprint(tuple(_STUBS))
    try:
        for part in (*functions[:2], tuple(defn.hooks.items()), functions[3]):
            fingerprint.add(part)  # type: ignore[union-attr]
    except Uncacheable:
        fingerprint = None
    cached = None if fingerprint is None else _PICKLES.get(fingerprint)
    if cached is None:
        buf = io.BytesIO()
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(functions)
        code = buf.getvalue()
        cached = code, hashlib.blake2b(code, digest_size=16).digest()
        if fingerprint is not None:
            _PICKLES.put(fingerprint, *cached)
    code, code_hash = cached
    parts = (c.task, c.run, c.attempt, c.queue, c.machine)
    ctx = tuple(tuple(getattr(part, name) for name in names)
                for part, names in zip(parts, _CTX_FIELDS, strict=True))
    retry = None if plan.retry is None else plan.retry.model_dump()
    limits = tuple(getattr(LIMITS, name) for name in _LIMIT_FIELDS)
    return Job(code, code_hash, defn.id, retry, plan.payload_json, ctx, scope.metadata,
               scope.tags, limits)


def _take_limits(limits: tuple[int, ...]) -> None:
    """The kernel's size limits, in this worker: an output or metadata is held to what
    `configure(limits=...)` set there, not to the defaults the worker started with."""
    for name, value in zip(_LIMIT_FIELDS, limits, strict=True):
        if getattr(LIMITS, name) != value:
            setattr(LIMITS, name, value)


class MissingCode(Exception):
    """The worker was sent a hash for code it doesn't hold (the caches disagreed)."""


def load_code(job: Job) -> tuple[Any, ...]:
    """The job's functions: loaded once per worker, then found by hash."""
    loaded = LOADED.get(job.code_hash)
    if loaded is None:
        if job.code is None:
            raise MissingCode(job.code_hash.hex())
        loaded = pickle.loads(job.code)
        LOADED.add(job.code_hash, loaded)
    return loaded  # type: ignore[no-any-return]


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


async def run_job(job: Job, remote: _remote.RemoteEngine,
                  caller: Callable[[TaskDefinition], SyncCaller],
                  signal: CancelSignal | None = None) -> dict[str, Any]:
    """Run one attempt's whole lifecycle in this worker; returns the outcome message.

    `caller(defn)` says how this worker runs the task's sync code (see `_worker.InlineSync`).
    """
    from .._lifecycle import run_attempt

    _take_limits(job.limits)
    task, run, attempt, queue, machine = (cls(*values)
                                          for cls, values in zip(_CTX_PARTS, job.ctx, strict=True))
    ctx = TaskContext(task, run, attempt, queue, machine, signal=signal or CancelSignal())
    scope = AttemptScope(ctx, remote, dict(job.metadata), list(job.tags), remote)
    try:
        fn, schema, hooks, global_hooks = load_code(job)
    except MissingCode:
        return {"missing_code": True}
    except Exception as exc:  # e.g. a module the kernel imports by reference is missing here
        return {"load_error": error_record(TaskRunError(
            f"the worker could not load task {job.task_id!r}: {type(exc).__name__}: {exc}"))}
    defn = TaskDefinition(job.task_id, fn, schema=schema, hooks=hooks)
    retry = None if job.retry is None else RetryOptions.model_validate(job.retry)
    plan = AttemptPlan(_memory_errors_as_oom(defn, ctx.machine), job.payload_json, ctx,
                       retry, GlobalHooks(*global_hooks), time.time)
    outcome = await run_attempt(plan, scope, caller(defn))
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
