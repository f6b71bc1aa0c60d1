"""The process that reads history through ADBC, run as a script by _arrow (not imported).

Why a process of its own: the ADBC driver carries its own copy of SQLite, and SQLite's file locks
are POSIX locks, which belong to a process, not a connection. Two copies of SQLite in one process
don't see each other's locks, and either one closing the database file drops every lock the
process holds on it, so a frame read in the kernel would silently release the engine's write
lock, and another kernel on the same store could write at the same time. Here the driver's SQLite
is the only one in the process, and its locks are real locks to everyone else.

Protocol, over stdin and stdout: one JSON request per line, {"path", "parts": [[sql, params]...],
"busy_timeout", "batch_rows"}; the answer is one JSON line, {"sizes": [...]} or {"error": "..."},
then that many Arrow IPC streams of those sizes in bytes, one table per part. The process ends
when stdin closes, which is also what happens when the kernel dies. Nothing is pickled.

Imports only pyarrow, the driver and the standard library, so it starts without nbtasks or pandas.
"""

from __future__ import annotations

import json
import os
import sys
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


def _ipc(table: Any) -> Any:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def main() -> None:
    # The answers get stdout to themselves: anything else printing there (a library's notice)
    # would corrupt them, so file descriptor 1 becomes stderr for everyone else.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            tables = fetch(request["path"], request["parts"], request["busy_timeout"],
                           request["batch_rows"])
        except (AdbcError, OSError) as exc:  # e.g. a column whose type changed after a batch
            out.write(json.dumps({"error": str(exc)}).encode() + b"\n")
            out.flush()
            continue
        blobs = [_ipc(t) for t in tables]
        out.write(json.dumps({"sizes": [b.size for b in blobs]}).encode() + b"\n")
        for blob in blobs:
            out.write(blob)
        out.flush()


if __name__ == "__main__":
    main()
