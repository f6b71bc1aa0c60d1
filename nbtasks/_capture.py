"""print() and logging inside a run go to that run's log, not to whichever cell is executing.

`sys.stdout`/`sys.stderr` are wrapped once by a proxy that checks the attempt context variable:
inside a run, complete lines become log lines on the run; outside, writes pass straight through.
A root logging handler does the same for log records emitted inside a run.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

from ._context import CURRENT, AttemptScope

_installed = False
_lock = threading.Lock()
#: Every wrapper made (a handful: one per stream replacement), so an attempt's end finds its
#: unfinished line whichever one holds it.
_streams: list[_RunAwareStream] = []


class _RunAwareStream:
    """Wraps a text stream; writes made inside a run are captured line by line."""

    def __init__(self, stream: TextIO, level: str) -> None:
        self._nbtasks_stream = stream
        self._nbtasks_level = level
        self._nbtasks_partial: dict[str, str] = {}
        self._nbtasks_attrs = {"stream": "stdout" if level == "info" else "stderr"}
        _streams.append(self)

    def write(self, text: str) -> int:
        scope = CURRENT.get()
        if scope is None:
            return self._nbtasks_stream.write(text)
        key = scope.ctx.run.id
        buf = self._nbtasks_partial.pop(key, "") + text
        *lines, rest = buf.split("\n")
        for line in lines:
            scope.sink.log(self._nbtasks_level, line, self._nbtasks_attrs)
        if rest:
            self._nbtasks_partial[key] = rest
        return len(text)

    def flush(self) -> None:
        scope = CURRENT.get()
        if scope is not None:
            self._nbtasks_end_line(scope)
            return
        self._nbtasks_stream.flush()

    def _nbtasks_end_line(self, scope: AttemptScope) -> None:
        rest = self._nbtasks_partial.pop(scope.ctx.run.id, "")
        if rest:
            scope.sink.log(self._nbtasks_level, rest, self._nbtasks_attrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nbtasks_stream, name)


class _RunLogHandler(logging.Handler):
    """Records emitted inside a run become run log lines (level names follow the logger's)."""

    def emit(self, record: logging.LogRecord) -> None:
        scope = CURRENT.get()
        if scope is None:
            # Stand in for logging.lastResort, which no longer fires now that a handler exists.
            root = logging.getLogger()
            if record.levelno >= logging.WARNING and root.handlers == [self]:
                sys.stderr.write(self.format(record) + "\n")
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not kill the run
            message = str(record.msg)
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        level = {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname,
                                                              record.levelname.lower())
        scope.sink.log(level, message, {"logger": record.name})


def flush_partial_lines(scope: AttemptScope) -> None:
    """At the end of an attempt: a last `print(..., end="")` still reaches the run's log, and
    its buffer entry goes (it would otherwise stay for the life of the kernel)."""
    for stream in _streams:
        if stream._nbtasks_partial:  # almost always empty: this is on every attempt's path
            stream._nbtasks_end_line(scope)


def install() -> None:
    """Idempotent; called when an engine starts."""
    global _installed
    with _lock:
        # The streams are checked every time: something may have replaced sys.stdout since the
        # last engine started (pytest's capture, contextlib.redirect_stdout, a new kernel stream).
        if not isinstance(sys.stdout, _RunAwareStream):
            sys.stdout = _RunAwareStream(sys.stdout, "info")
        if not isinstance(sys.stderr, _RunAwareStream):
            sys.stderr = _RunAwareStream(sys.stderr, "error")
        if _installed:
            return
        _installed = True
        logging.getLogger().addHandler(_RunLogHandler())
