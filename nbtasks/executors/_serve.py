"""The kernel's side of a worker's requests (`_remote.RemoteEngine`): serve them for the run.

Each request runs as its own task on the engine loop with the attempt's scope as the current
one, so the engine treats it exactly like the same call made by a run in the kernel: a child
gets the run as its parent, and a wait parks the run (WAITING, queue slot released) until it
resumes. Requests in `PARKING` may wait on other runs: while one is open, the worker holding
the run doesn't count against its pool (see `_pool.Pool`), so a parent waiting on a child of
the same preset can't starve it of a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from .._context import CURRENT, AttemptScope
from .._errors import EngineError
from .._handles import RunHandle
from .._payload import loads
from .._tasks import Task, TaskDefinition
from ._remote import PARKING, RUNS_METHODS, HandleWire
from ._wire import result_to_wire

__all__ = ("HANDLERS", "PARKING", "serve")


def _defn(eng: Any, task_id: str) -> TaskDefinition:
    return eng.registry.require(task_id)  # type: ignore[no-any-return]


def _payload(eng: Any, defn: TaskDefinition, payload_json: str) -> str:
    """A schema_task's payload is validated again by the kernel's current definition."""
    if defn.schema is None:
        return payload_json
    return Task(defn, eng.registry).encode(loads(payload_json))


def _items(eng: Any, defn: TaskDefinition,
           items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(_payload(eng, defn, pj), opts) for pj, opts in items]


def _handle(h: RunHandle[Any]) -> HandleWire:
    return (h.id, h.task_id, h.is_cached)


async def _trigger(eng: Any, task_id: str, pj: str, options: dict[str, Any]) -> HandleWire:
    defn = _defn(eng, task_id)
    return _handle(eng.trigger_encoded(defn, _payload(eng, defn, pj), options))


async def _trigger_and_wait(eng: Any, task_id: str, pj: str, options: dict[str, Any]) -> Any:
    defn = _defn(eng, task_id)
    return result_to_wire(await eng.trigger_and_wait_encoded(defn, _payload(eng, defn, pj),
                                                             options))


async def _batch_trigger(eng: Any, task_id: str, items: list[tuple[str, dict[str, Any]]],
                         options: dict[str, Any]) -> Any:
    defn = _defn(eng, task_id)
    batch = eng.batch_trigger_encoded(defn, _items(eng, defn, items), options)
    return batch.id, [_handle(h) for h in batch.runs]


async def _batch_trigger_and_wait(eng: Any, task_id: str, items: list[tuple[str, dict[str, Any]]],
                                  options: dict[str, Any]) -> Any:
    defn = _defn(eng, task_id)
    batch = await eng.batch_trigger_and_wait_encoded(defn, _items(eng, defn, items), options)
    return batch.id, [result_to_wire(r) for r in batch.runs]


async def _result(eng: Any, run_id: str) -> Any:
    return result_to_wire(await eng.result_async(run_id))


async def _results(eng: Any, run_ids: list[str]) -> Any:
    return [result_to_wire(r) for r in await eng.results_async(run_ids)]


async def _status(eng: Any, run_id: str) -> str:
    return str(eng.status_of(run_id).value)


async def _wait_for(eng: Any, seconds: float) -> None:
    await eng.wait.for_(seconds=seconds)


async def _wait_until(eng: Any, when: float, throw: bool) -> None:
    await eng.wait.until(datetime.fromtimestamp(when, UTC), throw_if_in_the_past=throw)


async def _create_token(eng: Any, expires: Any, tags: Any, key: str | None) -> Any:
    return eng.wait.create_token(timeout=expires, tags=tags, idempotency_key=key)


async def _complete_token(eng: Any, token: str, data: Any) -> bool:
    return bool(eng.wait.complete_token(token, data))


async def _for_token(eng: Any, token: str) -> Any:
    return await eng.wait.for_token(token)


async def _list_tokens(eng: Any, status: str | None) -> Any:
    return await asyncio.to_thread(eng.wait.list_tokens, status)


async def _runs(eng: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if name not in RUNS_METHODS:
        raise EngineError(f"runs.{name} is not available inside a worker")
    # A thread, as from a cell: these read the store after letting pending writes land.
    value = await asyncio.to_thread(getattr(eng.runs, name), *args, **kwargs)
    if isinstance(value, RunHandle):
        return ("handle", *_handle(value))
    return value


HANDLERS: dict[str, Callable[..., Awaitable[Any]]] = {
    "trigger": _trigger, "trigger_and_wait": _trigger_and_wait, "batch_trigger": _batch_trigger,
    "batch_trigger_and_wait": _batch_trigger_and_wait, "result": _result, "results": _results,
    "status": _status, "wait_for": _wait_for, "wait_until": _wait_until,
    "create_token": _create_token, "complete_token": _complete_token, "for_token": _for_token,
    "list_tokens": _list_tokens, "runs": _runs,
}


async def serve(scope: AttemptScope, method: str, args: tuple[Any, ...]) -> Any:
    """Answer one request of the attempt `scope`. Runs in its own task, so CURRENT stays local."""
    handler = HANDLERS.get(method)
    if handler is None:
        raise EngineError(f"a worker sent an unknown request {method!r}")
    if scope.engine is None:
        raise EngineError("this attempt has no engine to serve its requests")
    CURRENT.set(scope)
    return await handler(scope.engine, *args)
