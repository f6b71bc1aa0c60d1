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

from ._context import CURRENT

_installed = False
_lock = threading.Lock()


class _RunAwareStream:
    """Wraps a text stream; writes made inside a run are captured line by line."""

    def __init__(self, stream: TextIO, level: str) -> None:
        self._nbtasks_stream = stream
        self._nbtasks_level = level
        self._nbtasks_partial: dict[str, str] = {}

    def write(self, text: str) -> int:
        scope = CURRENT.get()
        if scope is None:
            return self._nbtasks_stream.write(text)
        key = scope.ctx.run.id
        buf = self._nbtasks_partial.pop(key, "") + text
        *lines, rest = buf.split("\n")
        for line in lines:
            scope.sink.log(self._nbtasks_level, line, {"stream": "stdout" if
                           self._nbtasks_level == "info" else "stderr"})
        if rest:
            self._nbtasks_partial[key] = rest
        return len(text)

    def flush(self) -> None:
        scope = CURRENT.get()
        if scope is not None:
            rest = self._nbtasks_partial.pop(scope.ctx.run.id, "")
            if rest:
                scope.sink.log(self._nbtasks_level, rest, None)
            return
        self._nbtasks_stream.flush()

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
