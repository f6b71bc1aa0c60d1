"""One attempt: the hooks in Trigger.dev v3's order, with every error classified.

on_start (attempt 1 only; global, then task) -> init -> middleware(next -> run) ->
  success: encode output -> on_success (task, then global)
  failure: handle_error -> retry decision -> on_failure (task, then global; final failure only)
-> cleanup (always)

The rules of docs/design.md (decision 2): errors in init, middleware, run and cleanup fail
the attempt and the retry policy applies; errors in on_start/on_success/on_failure are logged
on the run and change nothing; an error in handle_error ends the run CRASHED with no retry
and no on_failure. The output is always run's value, whatever the middleware returns.

This module runs wherever the attempt runs: on the engine loop, or inside a worker process.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._capture import flush_partial_lines
from ._context import CURRENT, AttemptScope, TaskContext
from ._errors import AbortTaskRunError, OutputSerializationError, PayloadValidationError
from ._models import RetryOptions
from ._parking import parked
from ._payload import dumps, loads
from ._retry import decide
from ._status import RunStatus
from ._tasks import TaskDefinition, _is_async
from ._text import escape_text
from ._watchdog import user_code

SyncCaller = Callable[..., Awaitable[Any]]


def error_record(err: BaseException) -> dict[str, Any]:
    """A JSON-safe description of an exception: type, message, traceback.

    Escaped where needed: the message of an error about a file whose name holds a lone
    surrogate is ordinary, and must not make the run's record unwritable.
    """
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {"type": type(err).__name__, "message": escape_text(str(err)),
            "traceback": escape_text(tb)}


@dataclass(slots=True)
class GlobalHooks:
    """The trigger.config-style hooks set with `configure(on_start=..., ...)`."""

    on_start: Callable[..., Any] | None = None
    on_success: Callable[..., Any] | None = None
    on_failure: Callable[..., Any] | None = None

    @property
    def bare(self) -> bool:
        """No global hook is set: attempts may take the path without hooks."""
        return self.on_start is None and self.on_success is None and self.on_failure is None


@dataclass(slots=True)
class AttemptPlan:
    """Everything an executor needs to run one attempt."""

    defn: TaskDefinition
    payload_json: str
    ctx: TaskContext
    retry: RetryOptions | None
    hooks: GlobalHooks
    now: Callable[[], float]


@dataclass(slots=True)
class AttemptOutcome:
    """What one attempt ended with. `retry_at` set means "try again then"."""

    ok: bool
    output_json: str | None = None
    error: dict[str, Any] | None = None
    retry_at: float | None = None
    status: RunStatus = RunStatus.COMPLETED
    machine: str | None = None  # a bigger preset for the next attempt (out-of-memory retry)
    logs: list[tuple[str, str]] = field(default_factory=list)


#: is_async's answers by id(fn): (a weak reference to fn, the answer). A WeakKeyDictionary
#: lookup makes a weak reference and runs Python code on every call; this is one dict read.
_IS_ASYNC: dict[int, tuple[Callable[[], Any], bool]] = {}


def is_async(fn: Callable[..., Any]) -> bool:
    """inspect.iscoroutinefunction, remembered per function (it is on every attempt's path)."""
    hit = _IS_ASYNC.get(id(fn))
    if hit is not None and hit[0]() is fn:
        return hit[1]
    result = _is_async(fn)
    key = id(fn)
    try:
        ref = weakref.ref(fn, lambda _: _IS_ASYNC.pop(key, None))
    except TypeError:  # not weak-referenceable: just don't cache
        return result
    _IS_ASYNC[key] = (ref, result)
    return result


async def call_hook(fn: Callable[..., Any], args: tuple[Any, ...], call_sync: SyncCaller) -> Any:
    """Await an async callable, or run a sync one through `call_sync` (a worker thread)."""
    if is_async(fn):
        return await user_code(fn(*args))  # timed: a body that blocks the loop gets named
    result = await call_sync(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result


async def _swallowed(
    name: str, fns: tuple[Callable[..., Any] | None, ...], args: tuple[Any, ...],
    scope: AttemptScope, call_sync: SyncCaller,
) -> None:
    """Call the hooks in order; an error is logged on the run and changes nothing."""
    for fn in fns:
        if fn is None:
            continue
        try:
            await call_hook(fn, args, call_sync)
        except Exception as exc:
            scope.sink.log(
                "error", f"{name} hook raised {type(exc).__name__}: {exc}", {"hook": name}
            )


def _make_next(
    run: Callable[..., Any], payload: Any, ctx: TaskContext, call_sync: SyncCaller,
    box: list[Any], sync_middleware: bool,
) -> Callable[[], Any]:
    """The `next` handed to middleware: runs `run` once and remembers its value."""

    async def next_async() -> Any:
        if box:
            return box[0]
        value = await call_hook(run, (payload, ctx), call_sync)
        box.append(value)
        return value

    if not sync_middleware:
        return next_async
    loop = asyncio.get_running_loop()

    def next_sync() -> Any:  # called from the middleware's worker thread
        with parked():  # the body needs a thread of its own while this one waits for it
            return asyncio.run_coroutine_threadsafe(next_async(), loop).result()

    return next_sync


async def run_attempt(plan: AttemptPlan, scope: AttemptScope, call_sync: SyncCaller) -> AttemptOutcome:
    """Run one attempt's lifecycle and return its outcome. Cancellation propagates."""
    token = CURRENT.set(scope)
    try:
        return await _run(plan, scope, call_sync)
    finally:
        CURRENT.reset(token)
        flush_partial_lines(scope)


async def _run(plan: AttemptPlan, scope: AttemptScope, call_sync: SyncCaller) -> AttemptOutcome:
    defn, ctx = plan.defn, plan.ctx
    if not defn.hooks and defn.schema is None and plan.hooks.bare:
        return await _run_bare(plan, scope, call_sync)
    hook = defn.hooks.get
    payload: Any = loads(plan.payload_json)
    if defn.schema is not None:
        try:
            payload = defn.schema.model_validate(payload)
        except Exception as exc:
            err = PayloadValidationError(f"payload no longer matches {defn.schema.__name__}: {exc}")
            return AttemptOutcome(False, error=error_record(err), status=RunStatus.FAILED)
    if ctx.attempt.number == 1:
        fns = (plan.hooks.on_start, hook("on_start"))
        if fns != (None, None):  # most tasks have no hooks: skip the coroutine altogether
            await _swallowed("on_start", fns, (payload, ctx), scope, call_sync)
    outcome: AttemptOutcome
    try:
        try:
            if (init := hook("init")) is not None:
                ctx.init = await call_hook(init, (payload, ctx), call_sync)
            middleware = hook("middleware")
            if middleware is None:
                output = await call_hook(defn.run, (payload, ctx), call_sync)
            else:
                box: list[Any] = []
                nxt = _make_next(defn.run, payload, ctx, call_sync, box,
                                 not is_async(middleware))
                await call_hook(middleware, (payload, ctx, nxt), call_sync)
                output = box[0] if box else None
            output_json = output_json_of(defn.id, output)
        except Exception as err:
            outcome = await failed(plan, scope, call_sync, payload, err)
        else:
            fns = (hook("on_success"), plan.hooks.on_success)
            if fns != (None, None):
                await _swallowed("on_success", fns, (payload, output, ctx), scope, call_sync)
            outcome = AttemptOutcome(True, output_json=output_json)
    except asyncio.CancelledError:
        if ctx.signal.reason == "cancel" and (on_cancel := hook("on_cancel")) is not None:
            await asyncio.shield(_swallowed("on_cancel", (on_cancel,), (payload, ctx), scope,
                                            call_sync))
        await _cleanup(plan, scope, call_sync, payload)
        raise
    try:
        await _cleanup(plan, scope, call_sync, payload)
    except Exception as err:
        if outcome.ok or outcome.retry_at is not None:
            decision = decide(plan.retry, ctx.attempt.number, err, plan.now(), None,
                              machine=ctx.machine.name)
            outcome = AttemptOutcome(False, error=error_record(err), retry_at=decision.retry_at,
                                     status=RunStatus.FAILED)
    return outcome


async def _run_bare(plan: AttemptPlan, scope: AttemptScope,
                    call_sync: SyncCaller) -> AttemptOutcome:
    """`_run` for the common task with no hooks, no middleware and no schema: the same
    outcome, without looking up eight hooks that aren't there on every attempt."""
    defn = plan.defn
    payload: Any = loads(plan.payload_json)
    try:
        output = await call_hook(defn.run, (payload, plan.ctx), call_sync)
        output_json = output_json_of(defn.id, output)
    except Exception as err:
        return await failed(plan, scope, call_sync, payload, err)
    return AttemptOutcome(True, output_json=output_json)


def output_json_of(task_id: str, output: Any) -> str:
    """The output as stored; one the store can't hold fails the attempt (a user error, retried
    like any other), never the writer's batch."""
    if output is None:
        return "null"
    try:
        return dumps(output, what="output")
    except (TypeError, ValueError) as exc:  # ValueError: NaN, text SQLite can't hold
        raise OutputSerializationError(
            f"task {task_id!r} returned an output that is not JSON-serialisable: {exc}"
        ) from None


async def _cleanup(plan: AttemptPlan, scope: AttemptScope, call_sync: SyncCaller,
                   payload: Any) -> None:
    if (cleanup := plan.defn.hooks.get("cleanup")) is not None:
        await call_hook(cleanup, (payload, plan.ctx), call_sync)


async def failed(
    plan: AttemptPlan, scope: AttemptScope, call_sync: SyncCaller, payload: Any, err: Exception
) -> AttemptOutcome:
    ctx = plan.ctx
    no_retry = isinstance(err, AbortTaskRunError | OutputSerializationError)
    answer: Any = None
    handle_error = plan.defn.hooks.get("handle_error")
    if handle_error is not None and not no_retry and plan.retry is not None:
        try:
            answer = await call_hook(handle_error, (payload, err, ctx), call_sync)
            decision = decide(plan.retry, ctx.attempt.number, err, plan.now(), answer,
                              machine=ctx.machine.name)
        except Exception as hook_err:
            record = error_record(hook_err)
            record["message"] = f"handle_error raised {type(hook_err).__name__}: {hook_err}"
            record["cause"] = error_record(err)
            return AttemptOutcome(False, error=record, status=RunStatus.CRASHED)
    else:
        decision = decide(plan.retry, ctx.attempt.number, err, plan.now(), None,
                          no_retry=no_retry, machine=ctx.machine.name)
    final = decision.error
    if decision.retry_at is None:
        await _swallowed("on_failure", (plan.defn.hooks.get("on_failure"), plan.hooks.on_failure),
                         (payload, final, ctx), scope, call_sync)
    return AttemptOutcome(
        False, error=error_record(final), retry_at=decision.retry_at,
        status=decision.final_status, machine=decision.machine,
    )
