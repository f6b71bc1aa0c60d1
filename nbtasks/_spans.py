"""`logger.trace("name", **attrs)`: user spans, timed blocks recorded on the current run.

>>> @nbtasks.task(id="etl")                                     # doctest: +SKIP
... async def etl(payload, ctx):
...     async with nbtasks.logger.trace("load", source="s3") as span:
...         rows = await load()
...         span.set_attribute("rows", len(rows))
...         with nbtasks.logger.trace("parse"):                # nests under "load"
...             parse(rows)

A span is stored as log lines of level `span` (no table of its own): one when it opens, so a
span still running (or cut short by a killed worker) shows, and one when it closes, carrying
its end and status. Both have the same `span_id`; readers keep the last line per span. Log lines
already travel from worker processes and Dask workers to the kernel, so spans work wherever the
run's logger does, with no change to any executor.

The open span is a ContextVar, so nesting follows the code: an `asyncio.gather` of two traced
coroutines gives two sibling spans, and a sync body's thread inherits its caller's span.
"""

from __future__ import annotations

import os
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from ._context import CURRENT, AttemptScope
from ._errors import ConfigurationError

#: The log level that marks a span's lines; log views leave them out, the trace draws them.
SPAN_LEVEL = "span"

_OPEN: ContextVar[str | None] = ContextVar("nbtasks_span", default=None)
_counter = 0


def _new_span_id() -> str:
    # Unique within a run is enough; the pid and a counter keep worker processes apart.
    global _counter
    _counter += 1
    return f"span_{os.getpid():x}_{_counter:x}_{time.monotonic_ns() & 0xFFFFFF:x}"


def _now(scope: AttemptScope | None) -> float:
    """The engine's clock in the kernel (a test's manual clock too); wall time elsewhere."""
    clock = getattr(getattr(scope, "engine", None), "clock", None)
    return float(clock.now()) if clock is not None else time.time()


class Span:
    """One traced block. Use it with `with` or `async with`; it never swallows an exception.

    Outside a run it only times the block: nothing is recorded.
    """

    __slots__ = (
        "_scope",
        "_token",
        "attributes",
        "end",
        "error",
        "id",
        "name",
        "parent_id",
        "start",
        "status",
    )

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"logger.trace: the span name must be a non-empty str, "
                                     f"got {name!r}")
        self.name = name
        self.attributes = dict(attributes)
        self.id = ""
        self.parent_id: str | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.status = "pending"
        self.error: dict[str, str] | None = None
        self._scope: AttemptScope | None = None
        self._token: Token[str | None] | None = None

    def __repr__(self) -> str:
        return f"<Span {self.name!r} {self.status}>"

    def set_attribute(self, key: str, value: Any) -> None:
        """Add an attribute, recorded when the span closes (a row count known only at the end)."""
        self.attributes[key] = value

    def set_attributes(self, **attributes: Any) -> None:
        self.attributes.update(attributes)

    # ------------------------------------------------------------------ recording

    def _record(self) -> None:
        scope = self._scope
        if scope is None:
            return
        line: dict[str, Any] = {
            "span_id": self.id, "parent_id": self.parent_id, "attempt": scope.ctx.attempt.number,
            "start": self.start, "end": self.end, "status": self.status,
        }
        if self.error is not None:
            line["error"] = self.error
        if self.attributes:
            line["attributes"] = self.attributes
        scope.sink.log(SPAN_LEVEL, self.name, line)

    def _open(self) -> Span:
        if self._token is not None or self.end is not None:
            raise ConfigurationError(f"logger.trace: span {self.name!r} was already entered; "
                                     "make a new one for each block")
        self._scope = CURRENT.get()
        self.id = _new_span_id()
        self.parent_id = _OPEN.get()
        self._token = _OPEN.set(self.id)
        self.start = _now(self._scope)
        self.status = "running"
        self._record()
        return self

    def _close(self, exc: BaseException | None) -> None:
        self.end = _now(self._scope)
        if exc is None:
            self.status = "ok"
        elif isinstance(exc, Exception):
            self.status = "error"
            self.error = {"type": type(exc).__name__, "message": str(exc)}
        else:  # CancelledError, KeyboardInterrupt: the block was stopped, it did not fail
            self.status = "canceled"
        token, self._token = self._token, None
        if token is not None:
            try:
                _OPEN.reset(token)
            except ValueError:  # closed in another context (a generator resumed elsewhere)
                _OPEN.set(self.parent_id)
        self._record()

    def __enter__(self) -> Span:
        return self._open()

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(exc)

    async def __aenter__(self) -> Span:
        return self._open()

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._close(exc)


def current_span_id() -> str | None:
    """The id of the innermost open span in this context, if any."""
    return _OPEN.get()


__all__ = ("SPAN_LEVEL", "Span", "current_span_id")
