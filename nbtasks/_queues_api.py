"""`nbtasks.queue(...)` and `nbtasks.queues`: shared named queues, pause/resume, live counts.

>>> per_user = nbtasks.queue(name="per-user", concurrency_limit=1)      # doctest: +SKIP
>>> @nbtasks.task(id="sync-user", queue=per_user)
... async def sync_user(payload, ctx): ...
>>> sync_user.trigger({"user": 42}, concurrency_key="user-42")
>>> nbtasks.queues.pause("per-user"); nbtasks.queues.list()
>>> nbtasks.queues.set_limit("per-user", 4)     # until reset_limit, or the kernel restarts
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError
from ._models import QueueOptions, parse_queue

if TYPE_CHECKING:
    from ._engine import Engine

#: The highest per-key limit a queue may have, as a definition's `concurrency_limit`.
MAX_LIMIT = 1000


def queue(name: str, *, concurrency_limit: int | None = None, total: int | None = None) -> QueueOptions:
    """A named queue several tasks can share; `concurrency_limit` applies per concurrency key,
    `total` caps all keys together."""
    if not name:
        raise ConfigurationError("queue: name is required")
    opts = parse_queue({"name": name, "concurrency_limit": concurrency_limit, "total": total})
    assert opts is not None
    return opts


class QueuesAPI:
    """Bound to one engine (`eng.queues`) or the default one (`nbtasks.queues`)."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    def list(self) -> list[dict[str, Any]]:
        """Every queue the engine knows: limit, total, paused, running, queued, per-key counts."""
        eng = self._engine()
        return eng.on_loop(  # type: ignore[no-any-return]
            lambda: [q.snapshot() for q in eng.scheduler.dispatcher.queues.values()])

    def retrieve(self, name: str) -> dict[str, Any]:
        for q in self.list():
            if q["name"] == name:
                return q
        raise ConfigurationError(f"no queue named {name!r}")

    def pause(self, name: str) -> None:
        """Stop starting runs from `name`; running ones finish. Triggers still queue."""
        eng = self._engine()
        eng.on_loop(eng.scheduler.dispatcher.pause, name, True)

    def resume(self, name: str) -> None:
        eng = self._engine()
        eng.on_loop(eng.scheduler.dispatcher.pause, name, False)

    def set_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        """Override `name`'s per-key concurrency limit now (None: no limit, 0: hold every run).

        A raised limit starts waiting runs at once; a lowered one lets running runs finish. The
        override is runtime state, like pause: it outlives a redefinition of the queue's tasks
        but not the engine (a restarted kernel runs with the limits its code defines), so the
        code stays the one record of what a queue is meant to allow. Returns the queue's
        snapshot, as `retrieve` would.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or not 0 <= limit <= MAX_LIMIT):
            raise ConfigurationError(
                f"queues.set_limit({name!r}, {limit!r}): the limit must be an int from 0 to "
                f"{MAX_LIMIT}, or None for no limit")
        return self._change(name, "set_limit", limit, True)

    def reset_limit(self, name: str) -> dict[str, Any]:
        """Drop `set_limit`'s override: back to the limit the queue's definition gives."""
        return self._change(name, "reset_limit", None, False)

    def _change(self, name: str, verb: str, limit: int | None, on: bool) -> dict[str, Any]:
        eng = self._engine()
        dispatcher = eng.scheduler.dispatcher

        def change() -> dict[str, Any] | None:
            if name not in dispatcher.queues:  # checked on the loop, where queues appear
                return None
            return dispatcher.override(name, limit, on).snapshot()

        snapshot: dict[str, Any] | None = eng.on_loop(change)
        if snapshot is None:
            raise ConfigurationError(
                f"queues.{verb}: no queue named {name!r} (a queue appears when a task using it "
                "is defined or its first run is triggered)")
        return snapshot
