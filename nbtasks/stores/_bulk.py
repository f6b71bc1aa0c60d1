"""Many rows per statement: the store's inserts and updates of hundreds of rows at once.

executemany() steps once per row and drops the GIL around every step; with the engine loop
busy on another thread, each step then waits for the GIL to come back. One statement per
chunk of rows makes one sqlite3_step for hundreds of rows, and keeps a writer (the engine's,
or a cell committing its batch) from stalling behind the loop.
"""

from __future__ import annotations

import functools
import sqlite3
from itertools import chain
from typing import Any

#: Rows per statement. A few fixed sizes keep the statements in sqlite3's cache: a statement
#: made for every batch size would be parsed afresh each commit. 512 x 32 columns stays under
#: SQLite's 32,766 bound parameters.
CHUNKS = (512, 128, 32, 8, 1)


@functools.lru_cache(maxsize=64)
def multi_sql(template: str, width: int, count: int) -> str:
    """`template` with its `{values}` filled by `count` rows of `width` parameters."""
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(values=", ".join([row] * count))


def insert_many(conn: sqlite3.Connection, template: str, rows: list[tuple[Any, ...]]) -> None:
    """Execute `template` for `rows` (all of one width), in order, in as few statements as
    the fixed chunk sizes allow."""
    if not rows:
        return
    width = len(rows[0])
    i, n = 0, len(rows)
    for size in CHUNKS:
        if n - i < size:
            continue
        sql = multi_sql(template, width, size)
        while n - i >= size:
            conn.execute(sql, rows[i] if size == 1 else list(chain.from_iterable(
                rows[i:i + size])))
            i += size
