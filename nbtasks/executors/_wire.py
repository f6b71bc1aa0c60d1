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
import operator
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields
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
    retry: str | None  # RetryOptions as JSON (a worker validates each distinct text once)
    payload_json: str
    ctx: tuple[tuple[Any, ...], ...]  # TaskContext's frozen parts, each as its fields' values
    metadata: dict[str, Any]
    tags: list[str]
    limits: tuple[int, ...]  # the kernel's configure(limits=...), in `Limits` field order


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of `names` as a tuple, read in C (attrgetter); always a tuple, even of one."""
    get = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (get(obj),)
    return get


#: The size limits' names, in the order `Job.limits` carries them.
_LIMIT_FIELDS = tuple(f.name for f in fields(Limits))
_LIMITS_OF = _getter(_LIMIT_FIELDS)
#: TaskContext's frozen parts, in the order `Job.ctx` carries them.
_CTX_PARTS = (TaskInfo, RunInfo, AttemptInfo, QueueInfo, MachineInfo)
_CTX_FIELDS = tuple(tuple(f.name for f in fields(cls)) for cls in _CTX_PARTS)
_TASK_OF, _RUN_OF, _ATTEMPT_OF, _QUEUE_OF, _MACHINE_OF = (_getter(n) for n in _CTX_FIELDS)
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
_STUB_TYPES: tuple[type, ...] = ()
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
    global _STUB_TYPES
    if not _STUBS:
        _STUBS.update(_stubs())
        _STUB_TYPES = tuple(_STUBS)
    defn, hooks, c = plan.defn, plan.hooks, plan.ctx
    functions = (defn.run, defn.schema, defn.hooks,
                 (hooks.on_start, hooks.on_success, hooks.on_failure))
    walk = Fingerprint(_STUB_TYPES)
    fingerprint: Fingerprint | None = walk
    try:
        walk.add_parts((defn.run, defn.schema, tuple(defn.hooks.items()) or None, *functions[3]))
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
    ctx = (_TASK_OF(c.task), _RUN_OF(c.run), _ATTEMPT_OF(c.attempt), _QUEUE_OF(c.queue),
           _MACHINE_OF(c.machine))
    return Job(code, code_hash, defn.id, _retry_json(plan.retry), plan.payload_json, ctx,
               scope.metadata, scope.tags, _LIMITS_OF(LIMITS))


#: RetryOptions (frozen) -> its JSON, by identity: a task's options are one object attempt
#: after attempt. The object is kept with its text, so its id can't name another meanwhile.
_RETRY_TEXT: dict[int, tuple[RetryOptions, str]] = {}


def _retry_json(retry: RetryOptions | None) -> str | None:
    if retry is None:
        return None
    hit = _RETRY_TEXT.get(id(retry))
    if hit is None:
        if len(_RETRY_TEXT) >= CODE_CACHE:
            _RETRY_TEXT.clear()
        hit = _RETRY_TEXT[id(retry)] = (retry, retry.model_dump_json())
    return hit[1]


#: In a worker: each distinct retry text, validated once.
_RETRY_OPTIONS: dict[str, RetryOptions] = {}


def _retry_options(text: str | None) -> RetryOptions | None:
    if text is None:
        return None
    options = _RETRY_OPTIONS.get(text)
    if options is None:
        if len(_RETRY_OPTIONS) >= CODE_CACHE:
            _RETRY_OPTIONS.clear()
        options = _RETRY_OPTIONS[text] = RetryOptions.model_validate_json(text)
    return options


def _take_limits(limits: tuple[int, ...]) -> None:
    """The kernel's size limits, in this worker: an output or metadata is held to what
    `configure(limits=...)` set there, not to the defaults the worker started with."""
    if _LIMITS_OF(LIMITS) == limits:
        return
    for name, value in zip(_LIMIT_FIELDS, limits, strict=True):
        if getattr(LIMITS, name) != value:
            setattr(LIMITS, name, value)


class MissingCode(Exception):
    """The worker was sent a hash for code it doesn't hold (the caches disagreed)."""


class _Loaded:
    """A job's functions as loaded in a worker, and the definition built from them per task id
    (the same code may serve two tasks): made once, then reused attempt after attempt."""

    __slots__ = ("defns", "global_hooks", "parts")

    def __init__(self, parts: tuple[Any, ...]) -> None:
        self.parts = parts  # run, schema, task hooks, (on_start, on_success, on_failure)
        self.global_hooks = GlobalHooks(*parts[3])
        self.defns: dict[str, TaskDefinition] = {}

    def definition(self, task_id: str) -> TaskDefinition:
        defn = self.defns.get(task_id)
        if defn is None:
            run, schema, hooks, _ = self.parts
            defn = self.defns[task_id] = TaskDefinition(task_id, _memory_errors_as_oom(run),
                                                        schema=schema, hooks=hooks)
        return defn


def load_code(job: Job) -> _Loaded:
    """The job's functions: loaded once per worker, then found by hash."""
    loaded = LOADED.get(job.code_hash)
    if loaded is None:
        if job.code is None:
            raise MissingCode(job.code_hash.hex())
        loaded = _Loaded(pickle.loads(job.code))
        LOADED.add(job.code_hash, loaded)
    return loaded  # type: ignore[no-any-return]


def _oom(exc: MemoryError, ctx: Any) -> OutOfMemoryError:
    machine = getattr(ctx, "machine", None)
    where = (f"the {machine.name} machine ({machine.memory:g} GB)"
             if isinstance(machine, MachineInfo) else "its machine")
    return OutOfMemoryError(f"the run ran out of memory on {where}: {exc or 'MemoryError'}")


def _memory_errors_as_oom(run: Callable[..., Any]) -> Callable[..., Any]:
    """A MemoryError raised by the run is the machine running out: report it as such (the
    machine is read from the attempt's ctx, so one wrapper serves every attempt)."""
    if _is_async(run):
        async def run_async(payload: Any, ctx: Any) -> Any:
            try:
                return await run(payload, ctx)
            except MemoryError as exc:
                raise _oom(exc, ctx) from exc

        return run_async

    def run_sync(payload: Any, ctx: Any) -> Any:
        try:
            return run(payload, ctx)
        except MemoryError as exc:
            raise _oom(exc, ctx) from exc

    return run_sync


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
        loaded = load_code(job)
    except MissingCode:
        return {"missing_code": True}
    except Exception as exc:  # e.g. a module the kernel imports by reference is missing here
        return {"load_error": error_record(TaskRunError(
            f"the worker could not load task {job.task_id!r}: {type(exc).__name__}: {exc}"))}
    plan = AttemptPlan(loaded.definition(job.task_id), job.payload_json, ctx,
                       _retry_options(job.retry), loaded.global_hooks, time.time)
    outcome = await run_attempt(plan, scope, caller(plan.defn))
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
