"""Task definitions, the `task()`/`schema_task()` factories and the per-engine registry.

>>> @nbtasks.task(id="hello-world", retry={"max_attempts": 5})     # doctest: +SKIP
... async def hello_world(payload, ctx):
...     return {"message": payload["message"]}
>>> hello_world = nbtasks.task(id="hello-world", run=some_function)  # the seed's form

Defining the same id again (re-running a cell) replaces the definition: new attempts use the new
code, attempts already running finish on the old.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from pydantic import BaseModel, ValidationError

from ._durations import HORIZON
from ._errors import ConfigurationError, PayloadValidationError, UnknownTaskError
from ._models import (
    QueueOptions,
    RetryOptions,
    check_machine,
    parse_queue,
    parse_retry,
)
from ._payload import check_text, dumps

if TYPE_CHECKING:
    from ._handles import BatchHandle, BatchResult, Result, RunHandle

PayloadT = TypeVar("PayloadT")
OutT = TypeVar("OutT")
M = TypeVar("M", bound=BaseModel)


class _NotGiven:
    """Sentinel for "not passed", distinct from None ("none at all")."""

    _instance: _NotGiven | None = None

    def __new__(cls) -> _NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Any = _NotGiven()

HOOKS = ("init", "cleanup", "middleware", "on_start", "on_success", "on_failure", "handle_error",
         "on_cancel")


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """Everything the engine needs to run a task; immutable, so a redefinition is a swap."""

    id: str
    run: Callable[..., Any]
    retry: RetryOptions | _NotGiven | None = NOT_GIVEN
    queue: QueueOptions | None = None
    machine: str | None = None
    max_duration: float | None = None
    schema: type[BaseModel] | None = None
    description: str | None = None
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def queue_name(self) -> str:
        return (self.queue.name if self.queue and self.queue.name else None) or f"task/{self.id}"

    def hook(self, name: str) -> Callable[..., Any] | None:
        return self.hooks.get(name)


class TaskOwner(Protocol):
    """The engine side of a Task: what trigger() and friends delegate to."""

    def trigger_encoded(
        self, defn: TaskDefinition, payload_json: str, options: dict[str, Any]
    ) -> RunHandle[Any]: ...

    async def trigger_async(
        self, defn: TaskDefinition, payload_json: str, options: dict[str, Any]
    ) -> RunHandle[Any]: ...

    async def trigger_and_wait_encoded(
        self, defn: TaskDefinition, payload_json: str, options: dict[str, Any]
    ) -> Result[Any]: ...

    def batch_trigger_encoded(
        self, defn: TaskDefinition, items: list[tuple[str, dict[str, Any]]], options: dict[str, Any]
    ) -> BatchHandle[Any]: ...

    async def batch_trigger_and_wait_encoded(
        self, defn: TaskDefinition, items: list[tuple[str, dict[str, Any]]], options: dict[str, Any]
    ) -> BatchResult[Any]: ...


class Registry:
    """Task id -> current definition. Listeners hear about every (re)definition."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDefinition] = {}
        self._listeners: list[Callable[[TaskDefinition], None]] = []
        self.owner: Callable[[], TaskOwner] | None = None

    def define(self, defn: TaskDefinition) -> None:
        self._tasks[defn.id] = defn
        for listener in list(self._listeners):
            listener(defn)

    def get(self, task_id: str) -> TaskDefinition | None:
        return self._tasks.get(task_id)

    def require(self, task_id: str) -> TaskDefinition:
        defn = self._tasks.get(task_id)
        if defn is None:
            known = ", ".join(sorted(self._tasks)) or "none yet"
            raise UnknownTaskError(f"no task with id {task_id!r} is defined (defined: {known})")
        return defn

    def ids(self) -> list[str]:
        return sorted(self._tasks)

    def listen(self, listener: Callable[[TaskDefinition], None]) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[TaskDefinition], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


#: Tasks defined with the module-level `nbtasks.task` live here; the default engine serves them.
DEFAULT_REGISTRY = Registry()


@dataclass(frozen=True, slots=True)
class BatchItem(Generic[PayloadT]):
    """One batch_trigger item with its own options: `BatchItem(payload, concurrency_key="u1")`."""

    payload: PayloadT
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(self, payload: PayloadT, **options: Any) -> None:
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "options", options)


MAX_BATCH = 500


class Task(Generic[PayloadT, OutT]):
    """A defined task. Trigger it from a cell, a script or another run."""

    def __init__(self, definition: TaskDefinition, registry: Registry) -> None:
        self._definition = definition
        self._registry = registry
        self.__doc__ = getattr(definition.run, "__doc__", None)

    @property
    def id(self) -> str:
        return self._definition.id

    @property
    def definition(self) -> TaskDefinition:
        return self._definition

    def __repr__(self) -> str:
        return f"<Task {self.id!r}>"

    def _owner(self) -> TaskOwner:
        if self._registry.owner is None:  # pragma: no cover - set when nbtasks is imported
            raise ConfigurationError("this task's registry has no engine")
        return self._registry.owner()

    def encode(self, payload: Any, *, where: str = "payload") -> str:
        """Validate (schema_task) and encode a payload in the caller, before anything is stored."""
        schema = self._definition.schema
        if schema is not None:
            try:
                model = payload if isinstance(payload, schema) else schema.model_validate(payload)
            except ValidationError as exc:
                raise PayloadValidationError(
                    f"{where} for task {self.id!r} does not match {schema.__name__}: "
                    + "; ".join(
                        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                        for e in exc.errors()
                    )
                ) from None
            return dumps(model.model_dump(mode="json"), what=where)
        return dumps(payload, what=where)

    def _encode_items(self, items: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
        if not isinstance(items, list | tuple):
            raise ConfigurationError("batch items must be a list")
        if not items:
            raise ConfigurationError("Batch cannot be triggered with no items")
        if len(items) > MAX_BATCH:
            raise ConfigurationError(
                f"Batch size of {len(items)} is too large. Maximum allowed batch size is {MAX_BATCH}."
            )
        out = []
        for i, item in enumerate(items):
            if isinstance(item, BatchItem):
                out.append((self.encode(item.payload, where=f"items[{i}]"), item.options))
            else:
                out.append((self.encode(item, where=f"items[{i}]"), {}))
        return out

    def trigger(self, payload: PayloadT, **options: Any) -> RunHandle[OutT]:
        """Start a run; returns at once with a handle, after the run is on disk."""
        return self._owner().trigger_encoded(self._definition, self.encode(payload), options)

    async def trigger_async(self, payload: PayloadT, **options: Any) -> RunHandle[OutT]:
        """trigger() for coroutines on any loop: returns once the run is durable."""
        return await self._owner().trigger_async(self._definition, self.encode(payload), options)

    async def trigger_and_wait(self, payload: PayloadT, **options: Any) -> Result[OutT]:
        """Trigger and wait for the Result. Inside a run the parent's queue slot is given back."""
        return await self._owner().trigger_and_wait_encoded(
            self._definition, self.encode(payload), options
        )

    def batch_trigger(
        self, items: Sequence[PayloadT | BatchItem[PayloadT]], **options: Any
    ) -> BatchHandle[OutT]:
        """Trigger 1..500 runs at once; options apply to every item unless the item sets its own."""
        return self._owner().batch_trigger_encoded(
            self._definition, self._encode_items(items), options
        )

    async def batch_trigger_and_wait(
        self, items: Sequence[PayloadT | BatchItem[PayloadT]], **options: Any
    ) -> BatchResult[OutT]:
        """Trigger a batch and wait for every Result, in item order. Failures never raise."""
        return await self._owner().batch_trigger_and_wait_encoded(
            self._definition, self._encode_items(items), options
        )


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


def build_definition(
    task_id: str,
    run: Callable[..., Any],
    *,
    retry: Any = NOT_GIVEN,
    queue: Any = None,
    machine: Any = None,
    max_duration: Any = None,
    schema: type[BaseModel] | None = None,
    description: str | None = None,
    hooks: dict[str, Any] | None = None,
    unknown: dict[str, Any] | None = None,
) -> TaskDefinition:
    """Validate every definition option and build the frozen TaskDefinition."""
    where = f"task {task_id!r}"
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown option(s) {sorted(unknown)}; valid options are "
            f"{sorted(['id', 'run', 'retry', 'queue', 'machine', 'max_duration', 'description', *HOOKS])}"
        )
    if not isinstance(task_id, str) or not task_id.strip():
        raise ConfigurationError(f"task id must be a non-empty string, got {task_id!r}")
    check_text(task_id, where="task id", max_chars=256)
    if not callable(run):
        raise ConfigurationError(f"{where}: run must be callable, got {run!r}")
    checked_hooks: dict[str, Callable[..., Any]] = {}
    for name, fn in (hooks or {}).items():
        if fn is None:
            continue
        if not callable(fn):
            raise ConfigurationError(f"{where}: {name} must be callable, got {fn!r}")
        checked_hooks[name] = fn
    if max_duration is not None and (
        isinstance(max_duration, bool)
        or not isinstance(max_duration, int | float)
        or not 0 < max_duration <= HORIZON  # False for NaN too
    ):
        raise ConfigurationError(
            f"{where}: max_duration must be a positive number of seconds up to "
            f"{HORIZON:.0f} (about 10 years), got {max_duration!r}")
    return TaskDefinition(
        id=task_id,
        run=run,
        retry=NOT_GIVEN if retry is NOT_GIVEN else parse_retry(retry, where=f"{where}: retry"),
        queue=parse_queue(queue, where=f"{where}: queue"),
        machine=None if machine is None else check_machine(machine, where=f"{where}: machine"),
        max_duration=None if max_duration is None else float(max_duration),
        schema=schema,
        description=description,
        hooks=checked_hooks,
    )


RunFn = Callable[[PayloadT, Any], Awaitable[OutT]] | Callable[[PayloadT, Any], OutT]


class TaskFactory:
    """`task(...)` bound to a registry: the module-level one, or an explicit Engine's."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @overload
    def __call__(
        self, *, id: str, run: Callable[[PayloadT, Any], Awaitable[OutT]], **options: Any
    ) -> Task[PayloadT, OutT]: ...

    @overload
    def __call__(
        self, *, id: str, run: Callable[[PayloadT, Any], OutT], **options: Any
    ) -> Task[PayloadT, OutT]: ...

    @overload
    def __call__(
        self, *, id: str, run: None = None, **options: Any
    ) -> Callable[[Callable[[PayloadT, Any], Any]], Task[PayloadT, Any]]: ...

    def __call__(
        self,
        *,
        id: str,
        run: Callable[..., Any] | None = None,
        retry: Any = NOT_GIVEN,
        queue: Any = None,
        machine: str | None = None,
        max_duration: float | None = None,
        description: str | None = None,
        init: Callable[..., Any] | None = None,
        cleanup: Callable[..., Any] | None = None,
        middleware: Callable[..., Any] | None = None,
        on_start: Callable[..., Any] | None = None,
        on_success: Callable[..., Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        handle_error: Callable[..., Any] | None = None,
        on_cancel: Callable[..., Any] | None = None,
        schema: type[BaseModel] | None = None,
        **unknown: Any,
    ) -> Any:
        hooks = {
            "init": init, "cleanup": cleanup, "middleware": middleware, "on_start": on_start,
            "on_success": on_success, "on_failure": on_failure, "handle_error": handle_error,
            "on_cancel": on_cancel,
        }

        def define(fn: Callable[..., Any]) -> Task[Any, Any]:
            defn = build_definition(
                id, fn, retry=retry, queue=queue, machine=machine, max_duration=max_duration,
                schema=schema, description=description, hooks=hooks, unknown=unknown,
            )
            self.registry.define(defn)
            return Task(defn, self.registry)

        if run is not None:
            return define(run)
        if unknown:  # fail at the decorator line, not at the decorated function
            build_definition(id, lambda p, c: None, unknown=unknown)
        return define

    def schema_task(
        self, *, id: str, schema: type[M], run: Callable[..., Any] | None = None, **options: Any
    ) -> Any:
        """A task whose payload is validated by a pydantic model in the caller."""
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise ConfigurationError(f"task {id!r}: schema must be a pydantic BaseModel subclass")
        return self(id=id, run=run, schema=schema, **options)


task = TaskFactory(DEFAULT_REGISTRY)
schema_task = task.schema_task
