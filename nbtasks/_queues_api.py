"""`nbtasks.queue(...)` and `nbtasks.queues`: shared named queues, pause/resume, live counts.

>>> per_user = nbtasks.queue(name="per-user", concurrency_limit=1)      # doctest: +SKIP
>>> @nbtasks.task(id="sync-user", queue=per_user)
... async def sync_user(payload, ctx): ...
>>> sync_user.trigger({"user": 42}, concurrency_key="user-42")
>>> nbtasks.queues.pause("per-user"); nbtasks.queues.list()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError
from ._models import QueueOptions, parse_queue

if TYPE_CHECKING:
    from ._engine import Engine


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
