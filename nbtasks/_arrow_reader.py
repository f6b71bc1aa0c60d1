"""The process that reads history through ADBC, run as a script by _arrow (not imported).

Why a process of its own: the ADBC driver carries its own copy of SQLite, and SQLite's file locks
are POSIX locks, which belong to a process, not a connection. Two copies of SQLite in one process
don't see each other's locks, and either one closing the database file drops every lock the
process holds on it, so a frame read in the kernel would silently release the engine's write
lock, and another kernel on the same store could write at the same time. Here the driver's SQLite
is the only one in the process, and its locks are real locks to everyone else.

Protocol, over stdin and stdout: one JSON request per line, {"path", "parts": [[sql, params]...],
"busy_timeout", "batch_rows"}; the answer is one JSON line, {"files": [...]} or {"error": "..."}:
one Arrow IPC file per part, written owner-only to shared memory (/dev/shm, else the temporary
directory), which the kernel reads in one pass and unlinks. A pipe would cost three copies of
every byte and thousands of 64 KiB reads: about 0.7 s of CPU for a frame of 140 MB, half the
read's own cost. A file the kernel did not take (it died mid-answer) is removed at the next request
and when the process ends, which is when stdin closes, as it does when the kernel dies.
Nothing is pickled.

Imports only pyarrow, the driver and the standard library, so it starts without nbtasks or pandas.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
from adbc_driver_manager import Error as AdbcError
from adbc_driver_sqlite import dbapi


def fetch(path: str, parts: list[list[Any]], busy_timeout: float, batch_rows: str) -> list[Any]:
    """Every part on its own connection and thread: the driver works without the GIL."""
    def one(part: list[Any]) -> Any:
        sql, params = part
        with dbapi.connect(Path(path).as_uri() + "?mode=ro") as conn, conn.cursor() as cur:
            # The driver's default is to fail at once on a lock held a moment (the WAL index
            # while another connection opens, a checkpoint): wait as the store's connections do.
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": batch_rows})
            cur.execute(sql, tuple(params) if params else None)
            return cur.fetch_arrow_table()

    if len(parts) == 1:
        return [one(parts[0])]
    with ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(one, parts))


#: Where answers are written: memory, where the system has it as a file system.
SHARED = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _write(table: Any) -> str:
    """`table` as an Arrow IPC file of its own, created owner-only (mkstemp), straight from
    its buffers. Shared memory can be smaller than a frame (a container's is often 64 MiB):
    then the temporary directory takes it."""
    for directory in (SHARED, None) if SHARED else (None,):
        name = None
        try:
            fd, name = tempfile.mkstemp(prefix="nbtasks-frame-", suffix=".arrow", dir=directory)
            os.close(fd)
            with pa.OSFile(name, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            return name
        except OSError:
            if name is not None:
                _remove([name])
            if directory is None:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _remove(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def main() -> None:
    # The answers get stdout to themselves: anything else printing there (a library's notice)
    # would corrupt them, so file descriptor 1 becomes stderr for everyone else.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    written: list[str] = []  # the last answer's files: the kernel unlinks them once read
    try:
        for line in sys.stdin.buffer:
            _remove(written)
            written = []
            request = json.loads(line)
            try:
                tables = fetch(request["path"], request["parts"], request["busy_timeout"],
                               request["batch_rows"])
                for table in tables:
                    written.append(_write(table))
                del tables
                answer: dict[str, Any] = {"files": written}
            except (AdbcError, OSError) as exc:  # e.g. a column whose type changed after a batch
                _remove(written)
                written = []
                answer = {"error": str(exc)}
            out.write(json.dumps(answer).encode() + b"\n")
            out.flush()
    finally:
        _remove(written)


if __name__ == "__main__":
    main()
