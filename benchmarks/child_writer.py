"""A sketch of a design nbtasks does not use, kept to be measured: the store's commits made by a
child process instead of the kernel's own threads.

Why measure it: in one CPython process the SQLite work of a run (its insert, its final row, its
attempt's row) cannot run beside the engine's Python. sqlite3 lets the GIL go while SQLite
works, but takes it back after every statement, and waits up to the switch interval (5 ms) for
a busy thread to give it up; the `design` section of `throughput.py` shows the cost. A child
process has no such wait: its SQLite runs on another core while the kernel goes on.

What the sketch does: `ChildWriterStore` is the SQLite store with every commit of new runs or
progress sent over a pipe (marshal: tuples of text, numbers and None) to a child that applies it
with the store's own statements in one transaction and answers. A cell's single `trigger()`
still goes to the intake in the kernel, and reads still use the kernel's own connections.

What it leaves out, and a real design would need: a reply lost after the child committed (its
resend must be idempotent), a child that dies or runs out of memory, a batch the store refuses
row by row, the start-up cost of a process per engine, and every durability test; and it sends
one commit at a time, answered before the next is sent, where a real one would pipeline them (the
section prints what that could give at best). So it measures the design, and is not a candidate
to ship.
"""

from __future__ import annotations

import marshal
import multiprocessing
import sqlite3
import time
from multiprocessing.connection import Connection
from typing import Any

from nbtasks.stores import sqlite as store
from nbtasks.stores._base import Refused, WriteBatch

_FIELDS = ("runs", "updates", "previous", "attempts", "logs", "waitpoints", "statements",
           "fresh", "intake")


def serve(pipe: Connection, path: str) -> None:
    """The child: one connection, one transaction per message, until the kernel's end closes."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -4096")
    while True:
        try:
            message = pipe.recv_bytes()
        except EOFError:
            conn.close()
            return
        if not message:  # asked for its CPU seconds so far
            pipe.send_bytes(repr(time.process_time()).encode())
            continue
        batch = WriteBatch(**dict(zip(_FIELDS, marshal.loads(message), strict=True)))
        try:
            conn.execute("BEGIN IMMEDIATE")
            store._apply(conn, batch, [])
            conn.execute("COMMIT")
            pipe.send_bytes(b"")
        except Exception as exc:  # sent back as text: the kernel raises it
            store._rollback(conn)
            pipe.send_bytes(f"{type(exc).__name__}: {exc}".encode())


class ChildWriterStore(store.SQLiteStore):
    """The SQLite store, its commits made by a child process (see the module's docstring)."""

    def open(self) -> None:
        super().open()
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self._child = context.Process(target=serve, args=(theirs, self._abs), daemon=True)
        self._child.start()
        theirs.close()

    def _transaction(self, batch: WriteBatch, *, each: bool) -> list[Refused]:
        if batch.intake and len(batch.runs) == 1 and not (batch.updates or batch.attempts):
            return super()._transaction(batch, each=each)  # a cell's trigger(): the intake
        message = marshal.dumps(tuple(getattr(batch, f) for f in _FIELDS))
        with self._lock:  # one exchange at a time, as one connection commits one at a time
            self._pipe.send_bytes(message)
            answer = self._pipe.recv_bytes()
        if answer:
            raise RuntimeError(answer.decode())
        return []

    def child_cpu(self) -> float:
        """The child's CPU seconds so far (its start-up included)."""
        with self._lock:
            self._pipe.send_bytes(b"")
            return float(self._pipe.recv_bytes())

    def close(self) -> None:
        child: Any = getattr(self, "_child", None)
        if child is not None:
            self._pipe.close()
            child.join(10)
        super().close()
