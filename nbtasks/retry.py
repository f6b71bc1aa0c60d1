"""`nbtasks.retry.on_throw(fn, **options)`: retry a block inside a run.

>>> rows = await nbtasks.retry.on_throw(fetch_page, max_attempts=5)     # doctest: +SKIP

`fn` receives `attempt` and `max_attempts` keyword arguments when it accepts them. Between tries
the run waits with the same machinery as `wait.for_`, so its queue slot is released.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._errors import AbortTaskRunError
from ._models import parse_retry
from ._retry import next_delay

T = TypeVar("T")


class _Retry:
    async def on_throw(self, fn: Callable[..., Awaitable[T] | T], **options: Any) -> T:
        from . import wait

        opts = parse_retry(options, where="retry.on_throw")
        assert opts is not None
        params = inspect.signature(fn).parameters
        wants = {"attempt", "max_attempts"} <= set(params) or any(
            p.kind is p.VAR_KEYWORD for p in params.values())
        attempt = 1
        while True:
            try:
                kwargs = {"attempt": attempt, "max_attempts": opts.max_attempts} if wants else {}
                result = fn(**kwargs)
                if inspect.isawaitable(result):
                    return await result
                return result
            except AbortTaskRunError:
                raise
            except Exception:
                delay = next_delay(opts, attempt)
                if not delay:
                    raise
                await wait.for_(seconds=delay / 1000)
                attempt += 1


retry = _Retry()
