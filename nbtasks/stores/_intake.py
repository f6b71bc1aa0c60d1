"""The intake: a second SQLite file where a cell's `trigger()` makes its new run durable.

A `trigger()` returns only once its run is on disk (docs/design.md). Committed straight into
`runs`, that row costs two of SQLite's bare commits (it updates five B-trees: the table, its
key and three indexes), and the cell waits behind the engine's writer, which commits the
progress of earlier runs into the same file. Here the cell's row goes into a table with no
index but its rowid, in a file of its own: one B-tree, and nothing to queue behind but the
writer's occasional delete of rows already folded.

The store folds intake rows into `runs` later, inside the writer's next transaction (a run
that moved on since is written once, with its newer state), or before any read of this
process (so what a cell triggered is visible to every read once `trigger()` returned), and
at open (what a killed kernel left here). The fold is `INSERT OR IGNORE`: a run already in
`runs` is newer there, so a row is never folded over its own later state, whoever folds it
(another kernel opening the same store, say). Folded rows are deleted from the intake
afterwards; one deleted late is harmless for that reason.

The intake's table has the columns of `runs` and nothing else: no key, no index, no
constraint. A row SQLite can't store (text that is not valid Unicode, an integer too big)
is refused in the caller, as it would be by `runs`; nothing in it is ever unpickled.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable
from operator import is_not, itemgetter
from pathlib import Path
from typing import Any

from .._errors import StoreError
from .._runstate import RUN_COLUMNS
from . import _trust

#: The intake's file beside the store's: `runs.db` keeps its new runs in `runs.db-intake`
#: (with SQLite's own `-wal` and `-shm` beside that).
SUFFIX = "-intake"

_SCHEMA = f"CREATE TABLE IF NOT EXISTS intake ({', '.join(RUN_COLUMNS)})"
_DELETE = "DELETE FROM intake WHERE rowid = ? AND id IS ?"
#: Folded rows are deleted from the file this many at a time (a burst of triggers must not
#: pay a transaction of deletes per commit of the writer); those left are deleted at close,
#: and any left by a killed kernel are folded as no-ops at the next open.
FORGET_EVERY = 1024

#: (rowid in the intake, the run's row): what is durable there and not yet folded.
Entry = tuple[int, tuple[Any, ...]]


_NONES = (None,) * len(RUN_COLUMNS)


def mask(row: tuple[Any, ...]) -> tuple[bool, ...]:
    """Which of a row's columns are set (a run's, or any narrower row's): a new run leaves
    most of its 32 columns NULL, and SQLite inserts a row a fifth faster when it isn't handed
    those NULLs."""
    return tuple(map(is_not, row, _NONES))


@functools.lru_cache(maxsize=256)
def fresh_template(table: str, columns: tuple[bool, ...], verb: str = "INSERT",
                   names: tuple[str, ...] = RUN_COLUMNS) -> str:
    """An insert naming only the `columns` set (see `mask`) of a table whose columns are
    `names` (a run's, unless told); `{values}` left to fill."""
    used = ", ".join(name for name, on in zip(names, columns, strict=True) if on)
    return f"{verb} INTO {table} ({used}) VALUES {{values}}"


@functools.lru_cache(maxsize=256)
def picker(columns: tuple[bool, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """The values of a row's `columns` (see `mask`), as a tuple: one C call a row."""
    used = [i for i, u in enumerate(columns) if u]
    if len(used) == 1:  # itemgetter of one index gives the value, not a 1-tuple
        only = used[0]
        return lambda row: (row[only],)
    return itemgetter(*used)


@functools.lru_cache(maxsize=256)
def _one_row(columns: tuple[bool, ...]) -> str:
    return fresh_template("intake", columns).format(
        values="(" + ", ".join("?" * sum(columns)) + ")")


def path_for(store_path: str) -> Path:
    return Path(store_path + SUFFIX)


class Intake:
    """One connection to the intake file, used under its own lock from any thread."""

    def __init__(self, path: Path,
                 open_file: Callable[[Path], tuple[sqlite3.Connection, tuple[int, int]]]) -> None:
        self.path = path
        #: The store's own way of opening its file (trust checks, 0600, WAL): used for this one.
        self._open_file = open_file
        self._lock = threading.Lock()
        #: Notified when a fold commits or is given back: a read waits on it (`wait_folded`).
        self._changed = threading.Condition(self._lock)
        #: Rows appended by this process so far; of those, taken by a fold (committed or in
        #: flight); of those, committed into `runs`. Counted in order: folds take every
        #: pending row, oldest first, one fold at a time.
        self.appended = 0
        self.taken = 0
        self.committed = 0
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._columns: list[str] = []  # of the file's table, which an older nbtasks may have made
        #: Written here, not yet folded into `runs` (taken by whoever folds them).
        self._pending: list[Entry] = []
        #: (rowid, id) folded into `runs`, not yet deleted here (a failed delete is tried again).
        self._to_delete: list[tuple[int, str]] = []

    def open(self) -> None:
        """Create (0600) or check the file like the store's own, and its table. A file that
        is not a database (or is damaged) is named in the error: it is this one, not the
        store's."""
        try:
            conn, self._identity = self._open_file(self.path)
            try:
                conn.execute(_SCHEMA)
                self._columns = [r[1] for r in conn.execute("PRAGMA table_info(intake)")]
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # a lock, a full disk: SQLite's own
                raise
            raise StoreError(f"{self.path}: {exc}") from exc
        self._conn = conn

    def identity_problem(self) -> StoreError | None:
        """Why this file can't be written (deleted or replaced since it was opened), or None."""
        if self._identity is None:
            return None
        return _trust.identity_error(str(self.path), self._identity)

    # ------------------------------------------------------------------ the cell's side

    def append(self, row: tuple[Any, ...]) -> None:
        """Commit one new run's row; durable when this returns. The store has checked that
        this file is still the one it opened (`SQLiteStore.check_identity(intake=True)`).

        Raises `StoreError` when the file can't be written now (a held lock, a full disk),
        and SQLite's own error for a row it refuses (text that is not valid Unicode, an
        integer too big): nothing is written either way.
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("store is not open")
        columns = mask(row)
        with self._lock:
            try:  # one statement is its own transaction
                rowid = conn.execute(_one_row(columns), picker(columns)(row)).lastrowid
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
            assert rowid is not None
            self._pending.append((rowid, row))
            self.appended += 1

    # ------------------------------------------------------------------ the folder's side

    def take(self) -> list[Entry]:
        """Every pending row, for a fold inside a transaction that holds the store's write
        lock already (`folded` once it commits, `give_back` if it doesn't)."""
        with self._lock:
            taken, self._pending = self._pending, []
            self.taken += len(taken)
            self._changed.notify_all()
        return taken

    def give_back(self, taken: list[Entry]) -> None:
        with self._lock:
            self._pending[:0] = taken
            self.taken -= len(taken)
            self._changed.notify_all()

    def folded(self, taken: list[Entry]) -> None:
        """`taken` is committed into `runs`: count it, wake the reads waiting for it, and
        delete it here (see `forget`)."""
        with self._lock:
            self.committed += len(taken)
            self._changed.notify_all()
        self.forget(taken)

    def wait_folded(self, target: int, take_wait: float, timeout: float) -> None:
        """Wait until the first `target` rows appended are committed into `runs`: up to
        `take_wait` for a fold to take them (the writer takes rows only once it holds the
        file's lock; another process may hold it), then up to `timeout` for that fold to
        commit, unless it is given back."""
        with self._changed:
            if not self._changed.wait_for(
                    lambda: self.committed >= target or self.taken >= target, take_wait):
                return
            self._changed.wait_for(
                lambda: self.committed >= target or self.taken < target, timeout)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def forget(self, taken: list[Entry], now: bool = False) -> None:
        """`taken` is committed into `runs`: delete it here, `FORGET_EVERY` rows at a time
        (all of them if `now`). A delete that fails is kept for the next one: a row left here
        is folded as a no-op."""
        conn = self._conn
        with self._lock:
            self._to_delete.extend((rowid, row[0]) for rowid, row in taken)
            if conn is None or not self._to_delete or (
                    len(self._to_delete) < FORGET_EVERY and not now):
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_DELETE, self._to_delete)
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                return
            self._to_delete = []

    def stored(self) -> list[Entry]:
        """Every row in the file, oldest first, as run rows (the fold at open). The file may
        come from another version of nbtasks: a column it lacks reads as NULL."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("store is not open")
        have = [c for c in RUN_COLUMNS if c in self._columns]
        picks = [have.index(c) if c in have else None for c in RUN_COLUMNS]
        with self._lock:
            rows = conn.execute(f"SELECT rowid, {', '.join(have)} FROM intake ORDER BY rowid"
                                ).fetchall()
        return [(r[0], tuple(None if i is None else r[1 + i] for i in picks)) for r in rows]

    def renew_if_outdated(self) -> None:
        """After the fold at open: a table made by another version of nbtasks, now empty, is
        made again with this version's columns."""
        conn = self._conn
        if conn is None or self._columns == list(RUN_COLUMNS):
            return
        with self._lock:
            conn.execute("DROP TABLE intake")
            conn.execute(_SCHEMA)
            self._columns = list(RUN_COLUMNS)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def is_run_row(row: tuple[Any, ...]) -> bool:
    """What the fold at open checks before it writes an intake row into `runs`: the columns
    `runs` requires, of the types it requires (the rest is checked where it is read)."""
    by = dict(zip(RUN_COLUMNS, row, strict=True))
    return (isinstance(by["id"], str) and isinstance(by["task_id"], str)
            and isinstance(by["status"], str) and isinstance(by["created_at"], int | float))
