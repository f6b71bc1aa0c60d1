"""What the scheduler publishes and where an attempt's side effects enter it.

`RunEvent` goes to every subscriber (the dashboard, `runs.subscribe()`, status lines) on each
change. `RunSink` is the kernel-side `AttemptSink`: logs, metadata and tags from any thread are
marshalled onto the engine loop. `EngineConfig` holds what `configure()` may change at any time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._lifecycle import GlobalHooks
from ._models import RetryOptions
from ._payload import MAX_DEPTH, readable_by_sqlite
from ._runstate import RunState
from ._runtime import mailbox
from ._status import RunStatus

if TYPE_CHECKING:
    from ._scheduler import Scheduler


def attributes_json(attrs: dict[str, Any]) -> str:
    """Log attributes as JSON. A value JSON cannot hold is kept as its str(): a log line must
    never fail the run that writes it (nor vanish when a sync body writes it). Attributes
    nested too deep to encode, or for SQLite's JSON functions to read (the logs DataFrame reads
    them with those), are replaced by a note saying so."""
    try:
        text = json.dumps(attrs, ensure_ascii=False, separators=(",", ":"), default=str)
    except RecursionError:
        text = ""
    if text and readable_by_sqlite(text):
        return text
    return json.dumps({"unstorable": "attributes nested too deep to store (the limit is "
                                     f"{MAX_DEPTH} levels), not kept"})


@dataclass(frozen=True, slots=True)
class RunEvent:
    """Published on every change. `kind`: created, status, log, metadata."""

    kind: str
    run_id: str
    task_id: str
    status: RunStatus
    at: float


@dataclass(slots=True)
class EngineConfig:
    """Settings `configure()` changes at any time; read at each attempt."""

    concurrency_limit: int = 100
    retry: RetryOptions | None = field(default_factory=RetryOptions)
    machine: str = "kernel"
    hooks: GlobalHooks = field(default_factory=GlobalHooks)
    resume: bool = True
    #: Seconds the engine loop may be blocked before a warning names the runs executing (0: off).
    loop_block_warning: float = 1.0
    #: Put full garbage collections off during a burst of runs (`nbtasks._collector`).
    defer_gc: bool = True


class RunSink:
    """An attempt's side effects, marshalled onto the engine loop from whatever thread."""

    __slots__ = ("run", "sched")

    def __init__(self, sched: Scheduler, run: RunState) -> None:
        self.sched = sched
        self.run = run

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self.sched.loop_thread:
            fn(*args)
        else:  # after whatever this thread handed the engine before (a child it triggered)
            mailbox(self.sched.loop).post(fn, *args)

    def log(self, level: str, message: str, attributes: dict[str, Any] | None) -> None:
        self._on_loop(self.sched.log, self.run, level, message, attributes)

    def metadata_changed(self, metadata: dict[str, Any]) -> None:
        self._on_loop(self.sched.set_metadata, self.run, metadata)

    def tags_changed(self, tags: list[str]) -> None:
        self._on_loop(self.sched.set_tags, self.run, tags)
