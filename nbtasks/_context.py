"""The running attempt, as context variables: `ctx`, `logger`, `metadata` and `tags`.

Everything here finds "the current run" through one ContextVar, so the same code works on the
engine loop, in a sync body's worker thread (contextvars are copied there) and in a worker
process (whose sink forwards to the kernel over a pipe).

>>> @nbtasks.task(id="etl")                               # doctest: +SKIP
... def etl(payload, ctx):
...     nbtasks.logger.info("loaded", rows=120)
...     nbtasks.metadata.set("progress", 0.5)
...     nbtasks.tags.add("big")
"""

from __future__ import annotations

import copy
import os
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import ConfigurationError, EngineError, PayloadSerializationError
from ._models import MAX_TAGS, check_tags
from ._payload import dumps, escape, escape_tree

if TYPE_CHECKING:
    from ._runstate import RunState
    from ._spans import Span


class CancelSignal:
    """`ctx.signal`: set when the run is cancelled or times out. Cooperative code checks it.

    Behaves like threading.Event (`is_set()`, `wait(timeout)`), but the Event (a lock and a
    condition) is only made if someone waits: every attempt gets a signal, few block on one.
    """

    __slots__ = ("_event", "_flag", "reason")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None
        self.reason: str | None = None

    def is_set(self) -> bool:
        return self._flag

    @property
    def aborted(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        if self._event is None:
            event = threading.Event()
            self._event = event
            if self._flag:  # set between the check and the assignment
                event.set()
        return self._event.wait(timeout)

    def abort(self, reason: str) -> None:
        if not self._flag:
            self.reason = reason
            self.set()


@dataclass(frozen=True, slots=True)
class TaskInfo:
    id: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """`ctx.run`. Times are kept as epoch seconds and made datetimes only when read: most
    attempts never look, and every attempt builds one."""

    id: str
    tags: tuple[str, ...]
    is_test: bool
    idempotency_key: str | None
    created_ts: float
    parent_id: str | None = None
    root_id: str | None = None
    batch_id: str | None = None
    max_attempts: int | None = None
    replayed_from: str | None = None

    @property
    def is_replay(self) -> bool:
        """True in a run made by `runs.replay()` (or a handle's), as in Trigger.dev."""
        return self.replayed_from is not None

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_ts, UTC)


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """`ctx.attempt`: the 1-based attempt number and when it started."""

    number: int
    started_ts: float

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self.started_ts, UTC)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str


@dataclass(frozen=True, slots=True)
class MachineInfo:
    name: str
    cpu: float
    memory: float


@dataclass(slots=True)
class TaskContext:
    """`ctx`, a snapshot taken when the attempt starts (Trigger.dev's context), plus `init` and `signal`."""

    task: TaskInfo
    run: RunInfo
    attempt: AttemptInfo
    queue: QueueInfo
    machine: MachineInfo
    signal: CancelSignal = field(default_factory=CancelSignal)
    init: Any = None


_RUN_SLOT: Any = TaskContext.__dict__["run"]
_ATTEMPT_SLOT: Any = TaskContext.__dict__["attempt"]


class StartedContext(TaskContext):
    """`ctx` as the kernel's scheduler makes it, at the start of every attempt: `run` and
    `attempt` are made on first read, from the run's state and the tags it had when the
    attempt started (a tags change replaces that list, never edits it). Most bodies never
    read them, and `run` alone (ten frozen fields) cost more than the rest of the ctx."""

    __slots__ = ("_source",)

    def __init__(self, task: TaskInfo, state: RunState, number: int, started_ts: float,
                 queue: QueueInfo, machine: MachineInfo, signal: CancelSignal) -> None:
        self.task = task
        self.queue = queue
        self.machine = machine
        self.signal = signal
        self.init = None
        self._source = (state, state.tags, number, started_ts)

    @property
    def run(self) -> RunInfo:
        try:
            info: RunInfo = _RUN_SLOT.__get__(self, TaskContext)
        except AttributeError:
            state, tags = self._source[0], self._source[1]
            info = RunInfo(state.id, tuple(tags), state.is_test, state.idempotency_key,
                           state.created_at, state.parent_id, state.root_id, state.batch_id,
                           state.max_attempts, state.replayed_from)
            _RUN_SLOT.__set__(self, info)
        return info

    @run.setter
    def run(self, value: RunInfo) -> None:
        _RUN_SLOT.__set__(self, value)

    @property
    def attempt(self) -> AttemptInfo:
        try:
            info: AttemptInfo = _ATTEMPT_SLOT.__get__(self, TaskContext)
        except AttributeError:
            info = AttemptInfo(self._source[2], self._source[3])
            _ATTEMPT_SLOT.__set__(self, info)
        return info

    @attempt.setter
    def attempt(self, value: AttemptInfo) -> None:
        _ATTEMPT_SLOT.__set__(self, value)

    def __repr__(self) -> str:
        return "TaskContext" + TaskContext.__repr__(self)[len("StartedContext"):]


class AttemptSink(Protocol):
    """Where a running attempt's side effects go: the scheduler in-kernel, a pipe in a worker."""

    def log(self, level: str, message: str, attributes: dict[str, Any] | None) -> None: ...

    def metadata_changed(self, metadata: dict[str, Any]) -> None: ...

    def tags_changed(self, tags: list[str]) -> None: ...


@dataclass(slots=True)
class AttemptScope:
    """What the context variable holds while an attempt runs."""

    ctx: TaskContext
    sink: AttemptSink
    metadata: dict[str, Any]
    tags: list[str]
    engine: Any = None  # the Engine, when the attempt runs in the kernel


CURRENT: ContextVar[AttemptScope | None] = ContextVar("nbtasks_attempt", default=None)


def current_scope() -> AttemptScope | None:
    return CURRENT.get()


def current_ctx() -> TaskContext | None:
    scope = CURRENT.get()
    return None if scope is None else scope.ctx


# --------------------------------------------------------------------------- logger

_LEVELS = ["none", "error", "warn", "info", "debug"]


def _level_index() -> int:
    level = os.environ.get("NBTASKS_LOG_LEVEL", _Logger.level)
    return _LEVELS.index(level) if level in _LEVELS else _LEVELS.index("info")


class _Logger:
    """`nbtasks.logger`: structured log lines recorded on the current run.

    A log line never fails the run that writes it: text SQLite can't store (a str with a lone
    surrogate, e.g. a file name from `os.fsdecode`) is kept with the bad character escaped
    visibly as `\\udcff`, in the message and in attribute keys and values; an attribute value
    JSON can't hold is kept as its str().
    """

    level = "info"

    def _emit(self, need: str, level: str, message: str, attrs: dict[str, Any]) -> None:
        if _level_index() < _LEVELS.index(need):
            return
        scope = CURRENT.get()
        if scope is not None:
            scope.sink.log(level, escape(str(message)), escape_tree(attrs) if attrs else None)

    def debug(self, message: str, **attributes: Any) -> None:
        self._emit("debug", "debug", message, attributes)

    def log(self, message: str, **attributes: Any) -> None:
        self._emit("info", "log", message, attributes)

    def info(self, message: str, **attributes: Any) -> None:
        self._emit("info", "info", message, attributes)

    def warn(self, message: str, **attributes: Any) -> None:
        self._emit("warn", "warn", message, attributes)

    warning = warn

    def error(self, message: str, **attributes: Any) -> None:
        self._emit("error", "error", message, attributes)

    def trace(self, name: str, **attributes: Any) -> Span:
        """A span around a block, nested in the run's trace: `with logger.trace("load", n=3):`
        or `async with`. Recorded whatever the log level: it is structure, not chatter."""
        from ._spans import Span

        return Span(name, attributes)


logger = _Logger()


# --------------------------------------------------------------------------- metadata


class _Metadata:
    """`nbtasks.metadata`: a JSON dict on the run, live while it executes.

    Outside a run the writers do nothing and the readers return None. Like log lines, strings
    holding a lone surrogate are stored with it escaped visibly (`\\udcff`), keys too, so
    `get()` returns the escaped text. A value JSON can't hold (an object, NaN, infinity) or a
    dict over the size limit (256 KB by default, `configure(limits={"metadata_bytes": ...})`)
    raises ConfigurationError naming the path, and the metadata stays as it was.
    """

    def _apply(self, change: Any) -> _Metadata:
        scope = CURRENT.get()
        if scope is None:
            return self
        new = copy.deepcopy(scope.metadata)
        change(new)
        if new == scope.metadata:
            return self
        try:
            dumps(new, what="metadata")
        except PayloadSerializationError:
            new = escape_tree(new, stringify=False)  # text made in a run is kept, escaped
            try:
                dumps(new, what="metadata")
            except PayloadSerializationError as exc:  # not JSON, or too big: the run's bug
                raise ConfigurationError(str(exc)) from None
        # A new dict each time: the writer may be serialising the old one on another thread.
        scope.metadata = new
        scope.sink.metadata_changed(new)
        return self

    def current(self) -> dict[str, Any] | None:
        scope = CURRENT.get()
        return None if scope is None else copy.deepcopy(scope.metadata)

    def get(self, key: str) -> Any:
        scope = CURRENT.get()
        return None if scope is None else copy.deepcopy(scope.metadata.get(key))

    def set(self, key: str, value: Any) -> _Metadata:
        return self._apply(lambda m: m.__setitem__(key, value))

    def delete(self, key: str) -> _Metadata:
        return self._apply(lambda m: m.pop(key, None))

    def replace(self, value: dict[str, Any]) -> _Metadata:
        if not isinstance(value, dict):
            raise ConfigurationError("metadata.replace: expected a dict")

        def change(m: dict[str, Any]) -> None:
            m.clear()
            m.update(value)

        return self._apply(change)

    def append(self, key: str, value: Any) -> _Metadata:
        def change(m: dict[str, Any]) -> None:
            old = m.get(key)
            m[key] = [value] if old is None else [*old, value] if isinstance(old, list) else [
                old, value]

        return self._apply(change)

    def remove(self, key: str, value: Any) -> _Metadata:
        def change(m: dict[str, Any]) -> None:
            old = m.get(key)
            if isinstance(old, list):
                m[key] = [v for v in old if v != value]

        return self._apply(change)

    def increment(self, key: str, value: float = 1) -> _Metadata:
        def change(m: dict[str, Any]) -> None:
            old = m.get(key)
            base = old if isinstance(old, int | float) and not isinstance(old, bool) else 0
            m[key] = base + value

        return self._apply(change)

    def decrement(self, key: str, value: float = 1) -> _Metadata:
        return self.increment(key, -value)


metadata = _Metadata()


# --------------------------------------------------------------------------- tags


class _Tags:
    """`nbtasks.tags.add(...)`: add tags to the current run (10 at most, 128 chars each)."""

    def add(self, *tags: str | list[str]) -> None:
        """Add tags to the current run; duplicates and blanks are skipped.

        As in Trigger.dev, going past 10 tags (in one call or in several) logs an error on the
        run and returns without adding any of the call's tags: a tag must never fail a run.
        A tag that is not a str or is over 128 characters raises ConfigurationError. A str with
        a lone surrogate is stored with it escaped visibly (`\\udcff`), as log lines are.
        """
        scope = CURRENT.get()
        if scope is None:
            raise EngineError("Can't set tags outside of a run: call tags.add() inside a task")
        flat: list[Any] = []
        for t in tags:
            flat.extend([t] if isinstance(t, str) else t)
        flat = [escape(t) if isinstance(t, str) else t for t in flat]
        new = [t for t in check_tags(flat, where="tags.add", count=False) if t not in scope.tags]
        if not new:
            return
        if len(scope.tags) + len(new) > MAX_TAGS:
            scope.sink.log(
                "error", f"tags.add: runs can only have {MAX_TAGS} tags, you're trying to set "
                f"{len(scope.tags) + len(new)}", None)
            return
        scope.tags = [*scope.tags, *new]
        scope.sink.tags_changed(scope.tags)


tags = _Tags()


def now_ms() -> float:
    return time.time() * 1000
