"""SQLite history: WAL, a busy timeout, owner-only files, JSON columns, a versioned schema.

`.nbtasks/runs.db` next to the notebook by default; `":memory:"` for an ephemeral store. Two
kernels may open the same file: WAL lets readers run beside the one writer, and the busy
timeout makes a writer wait for the other kernel's commit instead of failing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from operator import itemgetter, ne
from pathlib import Path
from typing import Any, TypeVar

from .._errors import StoreError
from .._runstate import ATTEMPT_COLUMNS, RUN_COLUMNS
from .._text import escape_row
from . import _intake, _trust
from ._base import Refused, Store, WriteBatch
from ._bulk import insert_many, multi_sql

_log = logging.getLogger("nbtasks")
K = TypeVar("K")

SCHEMA_VERSION = 5
_FINAL_SQL = (
    "('COMPLETED','CANCELED','FAILED','CRASHED','SYSTEM_FAILURE','INTERRUPTED','EXPIRED','TIMED_OUT')"
)

# The dashboard's "started" and "duration" sorts (nbtasks/notebook/queries.py) read their pages
# from two partial indexes. An expression index serves only a query that spells its expression
# the same way, so the keys are spelled here once, frozen with the migration that made them.
# A run without the key yet (not started; not finished, for "duration") sorts as if it were
# infinitely late or long. SORTED_RUNS holds every run except the queued ones that never
# started: a new run's INSERT (the trigger path) touches neither index; a run enters them when
# it starts, or when it ends without starting. The rest ("started_at IS NULL" and not final)
# is what is waiting in the queues, found through the status index.
# "Is final" is spelled as comparisons, not `status IN (...)`: SQLite evaluates a partial
# index's condition for every row written, and an IN list of constants builds a temporary
# b-tree each time, which made a new run's insert a third slower.
_IS_FINAL = "(" + " OR ".join(f"status = '{s}'" for s in (
    "COMPLETED", "FAILED", "CANCELED", "CRASHED", "EXPIRED", "TIMED_OUT", "SYSTEM_FAILURE",
    "INTERRUPTED")) + ")"
NOT_YET = "1e300"
STARTED_KEY = f"COALESCE(started_at, {NOT_YET})"
DURATION_KEY = (f"(CASE WHEN started_at IS NOT NULL AND {_IS_FINAL} THEN "
                f"MAX(0.0, COALESCE(finished_at, updated_at, started_at) - started_at) "
                f"ELSE {NOT_YET} END)")
SORTED_RUNS = f"(started_at IS NOT NULL OR {_IS_FINAL})"

#: Migrations: version -> statements taking a store from version-1 to version.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS runs (
            id TEXT PRIMARY KEY, task_id TEXT NOT NULL, status TEXT NOT NULL, payload TEXT,
            output TEXT, error TEXT, attempt_count INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, started_at REAL, finished_at REAL, updated_at REAL,
            delay_until REAL, ttl REAL, queued_at REAL, tags TEXT, metadata TEXT, parent_id TEXT,
            root_id TEXT, batch_id TEXT, is_test INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT,
            idempotency_expires_at REAL, concurrency_key TEXT, queue TEXT, machine TEXT,
            max_attempts INTEGER, max_duration REAL, priority REAL, owner TEXT, seq INTEGER)""",
        "CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at)",
        "CREATE INDEX IF NOT EXISTS runs_task ON runs(task_id, created_at)",
        "CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created_at)",
        "CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_id) WHERE parent_id IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS runs_idem ON runs(task_id, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL",
        """CREATE TABLE IF NOT EXISTS attempts (
            run_id TEXT NOT NULL, number INTEGER NOT NULL, status TEXT NOT NULL,
            started_at REAL, finished_at REAL, machine TEXT, queue TEXT, error_type TEXT,
            error_message TEXT, error TEXT, PRIMARY KEY (run_id, number)) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS logs (
            run_id TEXT NOT NULL, ts REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL,
            attributes TEXT)""",
        "CREATE INDEX IF NOT EXISTS logs_run ON logs(run_id, ts)",
        """CREATE TABLE IF NOT EXISTS waitpoints (
            id TEXT PRIMARY KEY, run_id TEXT, kind TEXT NOT NULL, status TEXT NOT NULL,
            created_at REAL NOT NULL, resume_at REAL, timeout_at REAL, completed_at REAL,
            output TEXT, tags TEXT, owner TEXT, data TEXT)""",
        "CREATE INDEX IF NOT EXISTS waitpoints_run ON waitpoints(run_id)",
        """CREATE TABLE IF NOT EXISTS schedules (
            id TEXT PRIMARY KEY, task_id TEXT NOT NULL, type TEXT NOT NULL, cron TEXT NOT NULL,
            timezone TEXT NOT NULL, external_id TEXT, deduplication_key TEXT UNIQUE,
            active INTEGER NOT NULL DEFAULT 1, last_timestamp REAL, created_at REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS engines (
            owner TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL,
            started_at REAL NOT NULL, process_started REAL)""",
    ],
    # v2: what a restarted kernel still owes a run ("restart": decide its retry once the task
    # is defined; "resume": re-run its waiting attempt), and who claimed a schedule's last tick.
    2: [
        "ALTER TABLE runs ADD COLUMN recovery TEXT",
        "ALTER TABLE schedules ADD COLUMN updated_at REAL",
        "ALTER TABLE schedules ADD COLUMN claimed_by TEXT",
        "CREATE INDEX IF NOT EXISTS schedules_task ON schedules(task_id)",
    ],
    # v3: a replay's origin (Trigger.dev's replayedFromTaskRunFriendlyId), shown as a link back.
    3: [
        "ALTER TABLE runs ADD COLUMN replayed_from TEXT",
    ],
    # v4: runs by end time. The timeline's window scan ("what ended inside these 5 minutes",
    # however long ago it started) and the summary's "finished in the last minute" read a
    # range of finished_at; without an index each is a scan of the whole history. created_at
    # rides along so "ended in the window, created before it" is answered from the index
    # alone, with a row read only for the runs that match.
    4: [
        "CREATE INDEX IF NOT EXISTS runs_finished ON runs(finished_at, created_at) "
        "WHERE finished_at IS NOT NULL",
        # The dashboard's batch filter pages a batch newest first. Partial: a run outside a
        # batch (a cell's plain trigger, the hot path) never touches it.
        "CREATE INDEX IF NOT EXISTS runs_batch ON runs(batch_id, created_at, id) "
        "WHERE batch_id IS NOT NULL",
    ],
    # v5: the dashboard's sorts on start time and duration (see SORTED_RUNS above).
    5: [
        f"CREATE INDEX IF NOT EXISTS runs_sort_started ON runs({STARTED_KEY}, id) "
        f"WHERE {SORTED_RUNS}",
        f"CREATE INDEX IF NOT EXISTS runs_sort_duration ON runs({DURATION_KEY}, id) "
        f"WHERE {SORTED_RUNS}",
    ],
}

_RUN_UPSERT = (
    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES {{values}} "
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in RUN_COLUMNS[1:])
)
#: What a run's life never changes once its row is stored. An update leaves these out, and
#: with them every index over them (created, task, parent, batch, idempotency key): SQLite
#: rewrites an index entry for each indexed column named in a SET, changed or not, and the
#: whole-row upsert named them all. Stored runs are updated for half the upsert's cost.
_FIXED = frozenset({"id", "task_id", "payload", "created_at", "parent_id", "root_id",
                    "batch_id", "is_test", "idempotency_key", "replayed_from"})
_UPDATED = tuple(i for i, c in enumerate(RUN_COLUMNS) if c not in _FIXED)


def _update_template(columns: tuple[int, ...]) -> str:
    """An update of `columns` (indexes into RUN_COLUMNS) from rows of (id, *those values)."""
    return ("UPDATE runs SET "
            + ", ".join(f"{RUN_COLUMNS[i]} = v.column{k + 2}" for k, i in enumerate(columns))
            + " FROM (VALUES {values}) AS v WHERE runs.id = v.column1")


#: A whole row -> its id and the columns an update writes: one C call a row rather than a Python
#: loop over 21 columns (a few times faster), in the writer's commit, where the store's lock is
#: held and a batch's cell waits for it.
_UPDATE_VALUES = itemgetter(0, *_UPDATED)
_RUN_UPDATE = _update_template(_UPDATED)
_STATUS = RUN_COLUMNS.index("status")


@functools.lru_cache(maxsize=256)
def _changed_update(changed: tuple[bool, ...]) -> tuple[str, itemgetter[tuple[Any, ...]]]:
    """The update and its row getter for runs whose `changed` columns (a flag per column of
    RUN_COLUMNS) differ from their last committed row. SQLite's cost for an update grows with
    the columns it names, about half a microsecond a row each (a run's end changes 6 of the
    22 a whole update names, and is written in about half the time). The fixed columns are
    never named, as in a whole update; a row with nothing changed names its status alone, so
    that it is still counted (a missing row is caught by the count)."""
    columns = tuple(i for i in _UPDATED if changed[i]) or (_STATUS,)
    return _update_template(columns), itemgetter(0, *columns)


#: An intake row into `runs`, unless its run is there already (then with a newer state).
_FOLD = f"INSERT OR IGNORE INTO runs ({', '.join(RUN_COLUMNS)}) VALUES {{values}}"
_ATTEMPT_UPSERT = f"INSERT OR REPLACE INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES {{values}}"
_LOG_INSERT = "INSERT INTO logs (run_id, ts, level, message, attributes) VALUES {values}"
def _insert_fresh(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                  verb: str = "INSERT") -> None:
    """New runs' rows, naming only the columns they set (`_intake.mask`). Rows setting the
    same columns (a batch with one set of options) share a statement. With `verb` "INSERT OR
    IGNORE" it folds intake rows: a run already in `runs` is newer there."""
    _insert_set(conn, rows, lambda columns: _intake.fresh_template("runs", columns, verb))


def _insert_attempts(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Attempts' rows, naming only the columns they set: a successful attempt leaves its three
    error columns NULL, and its row goes in about a third faster without them (a replaced row's
    columns left out are NULL all the same)."""
    _insert_set(conn, rows, lambda columns: _intake.fresh_template(
        "attempts", columns, "INSERT OR REPLACE", ATTEMPT_COLUMNS))


def _insert_set(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                template: Callable[[tuple[bool, ...]], str]) -> None:
    """Insert `rows` naming only the columns each sets: SQLite's cost for a row grows with the
    values it is handed, NULLs included. Rows setting the same columns share a statement
    (`template(columns)`)."""
    for columns, group in _grouped(rows, map(_intake.mask, rows)).items():
        insert_many(conn, template(columns), list(map(_intake.picker(columns), group)))


_NO_KEY = object()


def _grouped(rows: list[tuple[Any, ...]], keys: Iterable[K]) -> dict[K, list[tuple[Any, ...]]]:
    """`rows` by their `keys` (in step with them), each group in its rows' order. A key is
    compared with the last row's before it is hashed: a burst's rows most often share one (a
    batch's new runs set the same columns; their ends change the same ones)."""
    groups: dict[K, list[tuple[Any, ...]]] = {}
    last: object = _NO_KEY
    group: list[tuple[Any, ...]] = []
    for row, key in zip(rows, keys, strict=True):
        if key != last:
            last, group = key, groups.setdefault(key, [])
        group.append(row)
    return groups


WAITPOINT_COLUMNS = ("id", "run_id", "kind", "status", "created_at", "resume_at", "timeout_at",
                     "completed_at", "output", "tags", "owner", "data")
_WAITPOINT_UPSERT = (
    f"INSERT OR REPLACE INTO waitpoints ({', '.join(WAITPOINT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(WAITPOINT_COLUMNS))})"
)


#: Milliseconds a read's fold (`SQLiteStore.settle`) waits for the write lock (ours, then
#: another process's) before it reads without it.
_SETTLE_WAIT_MS = 100

#: Words of SQLite's messages for a failure that passes: the same write may succeed later.
_PASSING = ("locked", "busy", "full", "i/o", "readonly", "unable to open", "out of memory",
            "interrupted")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (it stays so). Two kernels opening a new file at once can meet
    here, and this pragma fails at once on a lock instead of waiting: retry it a while."""
    deadline = time.monotonic() + 30
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def passing(exc: sqlite3.Error) -> bool:
    """A lock, a full disk, an I/O error: the store can't be written now, but the rows are fine."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        w in str(exc).lower() for w in _PASSING)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open. SQLite rolls back by itself on some errors (a full disk, an I/O
    error): a ROLLBACK then would fail with "no transaction is active" and hide the real one."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _update_stored(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                   previous: list[tuple[Any, ...] | None]) -> None:
    """Runs already stored: only the columns their life changes, and of those, for a row whose
    last committed row is known (`previous`, in step with `rows`), only those that differ from
    it. Rows changing the same columns share a statement. A row that isn't there (the file was
    edited behind the engine's back) is caught by the count of changed rows, and the rows are
    then written whole: an upsert of a row already written is harmless."""
    before = conn.total_changes
    changed = (None if prev is None else tuple(map(ne, row, prev))
               for row, prev in zip(rows, previous, strict=True))
    for key, group in _grouped(rows, changed).items():
        sql, values = (_RUN_UPDATE, _UPDATE_VALUES) if key is None else _changed_update(key)
        insert_many(conn, sql, list(map(values, group)))
    if conn.total_changes - before != len(rows):
        insert_many(conn, _RUN_UPSERT, rows)


def _write_whole(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Runs first written with a newer state than their intake row's: inserted once, naming
    only the columns set (`_insert_fresh`), which SQLite does in about half the time of an
    upsert of the same whole rows, and well under the fold-then-update it replaces (the final
    update rewrites four of the table's index entries). A run already in `runs` (another
    kernel's fold at open took its intake row) is caught by the count of rows inserted, and
    the rows are then upserted: an upsert of a row already written is harmless."""
    before = conn.total_changes
    _insert_fresh(conn, rows, "INSERT OR IGNORE")
    if conn.total_changes - before != len(rows):
        insert_many(conn, _RUN_UPSERT, rows)


def _previous(batch: WriteBatch) -> list[tuple[Any, ...] | None]:
    """`batch.previous` in step with `batch.updates` (unknown where it stops short)."""
    previous, n = batch.previous, len(batch.updates)
    return previous[:n] if len(previous) >= n else [*previous, *([None] * (n - len(previous)))]


def _apply(conn: sqlite3.Connection, batch: WriteBatch,
           folding: list[_intake.Entry]) -> list[Refused]:
    if batch.fresh:
        _insert_fresh(conn, batch.runs)
    else:
        insert_many(conn, _RUN_UPSERT, batch.runs)
    updates = batch.updates
    previous = _previous(batch)
    if folding:
        # A run still in the intake whose newer state this batch carries is written once,
        # whole, instead of folded and then updated; the others are folded as they are.
        pending = {row[0] for _, row in folding}
        whole = [row for row in updates if row[0] in pending]
        if whole:
            kept = [i for i, row in enumerate(updates) if row[0] not in pending]
            updates = [updates[i] for i in kept]
            previous = [previous[i] for i in kept]
            _write_whole(conn, whole)
        written = {row[0] for row in whole}
        _insert_fresh(conn, [row for _, row in folding if row[0] not in written],
                      "INSERT OR IGNORE")
    if updates:
        _update_stored(conn, updates, previous)
    _insert_attempts(conn, batch.attempts)
    insert_many(conn, _LOG_INSERT, batch.logs)
    if batch.waitpoints:
        conn.executemany(_WAITPOINT_UPSERT, batch.waitpoints)
    for sql, params in batch.statements:
        conn.execute(sql, params)
    return []


def _apply_each(conn: sqlite3.Connection, batch: WriteBatch,
                folding: list[_intake.Entry]) -> list[Refused]:
    """Row by row: a refused row is left out (SQLite undoes a failed statement by itself) and the
    rest goes on. Text SQLite can't encode in an attempt, log or wait row is written escaped:
    those rows only describe a run. A run row is never rewritten here: its run is failed (or
    withdrawn, if it was never recorded) by the engine, which knows what the row means."""
    refused: list[Refused] = []

    def one(kind: str, run_id: str | None, sql: str, row: tuple[Any, ...], escape: bool) -> None:
        for attempt in (row, escape_row(row)) if escape else (row,):
            try:
                conn.execute(sql, attempt)
                return
            except sqlite3.Error as exc:
                if passing(exc):
                    raise
                err: Exception = exc
            except (UnicodeError, ValueError, TypeError, OverflowError) as exc:
                err = exc
        refused.append(Refused(kind, run_id, f"{type(err).__name__}: {err}"))

    run_sql = multi_sql(_RUN_UPSERT, len(RUN_COLUMNS), 1)
    fold_sql = multi_sql(_FOLD, len(RUN_COLUMNS), 1)
    for _, row in folding:
        one("run", str(row[0]), fold_sql, row, False)
    attempt_sql = multi_sql(_ATTEMPT_UPSERT, len(ATTEMPT_COLUMNS), 1)
    log_sql = multi_sql(_LOG_INSERT, 5, 1)
    for row in (*batch.runs, *batch.updates):
        one("run", str(row[0]), run_sql, row, False)
    for row in batch.attempts:
        one("attempt", str(row[0]), attempt_sql, row, True)
    for row in batch.logs:
        one("log", str(row[0]), log_sql, row, True)
    for row in batch.waitpoints:
        one("waitpoint", row[1], _WAITPOINT_UPSERT, row, True)
    for sql, params in batch.statements:
        one("statement", None, sql, params, False)
    return refused


def _fetch(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]
           ) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = conn.execute(sql, params)
    return [d[0] for d in cur.description or ()], cur.fetchall()


def _query(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]
           ) -> tuple[list[str], list[tuple[Any, ...]]]:
    try:
        return _fetch(conn, sql, params)
    except sqlite3.OperationalError as exc:
        if "decode" not in str(exc):
            raise
    # A TEXT value that isn't UTF-8 (written into the file by something else) would fail the
    # whole read, every run with it. Read again with such bytes shown as U+FFFD; the fast
    # decoder stays for every read that doesn't meet one.
    conn.text_factory = _lenient_text
    try:
        return _fetch(conn, sql, params)
    finally:
        conn.text_factory = str


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class SQLiteStore:
    """The default store. Thread-safe: one writer connection, one reader per thread."""

    def __init__(self, path: str | os.PathLike[str] = ".nbtasks/runs.db", *,
                 busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        #: Seconds a write (or a read) waits for another connection's lock before giving up.
        self.busy_timeout = busy_timeout
        self.memory = self.path == ":memory:"
        self._abs = self.path
        self._lock = threading.RLock()
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        #: Guards `_readers` alone: a new thread's first read must not wait for the write lock,
        #: which the writer holds for as long as another process holds the file's.
        self._readers_lock = threading.Lock()
        self._closed = False
        #: (st_dev, st_ino) of the file as opened; None for ":memory:".
        self._identity: tuple[int, int] | None = None
        #: Set once the file was found deleted or replaced: every later write raises it.
        self._lost: StoreError | None = None
        #: Watches the folder of the file and its intake; None for ":memory:".
        self._folder: _trust.FolderWatch | None = None
        #: Where a cell's new runs are committed first (see nbtasks.stores._intake); None for
        #: ":memory:", whose new runs go straight into `runs`.
        self._intake: _intake.Intake | None = None

    def _connect(self, path: Path | None = None) -> sqlite3.Connection:
        # A file store is opened read-write but never created by SQLite (`mode=rw`): the file
        # is made 0600 by `_trust.prepare`, and a reader opening after the file was deleted
        # must fail, not leave an empty file behind. The absolute path is fixed at open(), so
        # a notebook that changes directory keeps using the same file. `path`: another file of
        # the store's (its intake), named in the error if it is not a database.
        if path is None:
            target = self.path if self.memory else Path(self._abs).as_uri() + "?mode=rw"
            name = self.path
        else:
            target = path.as_uri() + "?mode=rw"
            name = self.path if str(path) == self._abs else str(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(target, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False, uri=not self.memory)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            # 4 MiB per connection. The writer touches only the tail of each table and index, and
            # a reader's cache is dropped whenever another connection commits (WAL), so a bigger
            # one only kept up to 64 MiB of pages resident for the kernel's life; the OS caches
            # the file.
            conn.execute("PRAGMA cache_size = -4096")
            if not self.memory:
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            if conn is not None:  # not a database, or locked: let its file handle go now
                conn.close()
            raise StoreError(f"{name}: {exc}") from exc
        return conn

    def _open_file(self, path: Path) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """Check `path` is ours (nbtasks.stores._trust; made 0600 if missing), open it read-write
        in WAL, and check the -wal and -shm SQLite made beside it: the store's file and its
        intake are opened the same way. Returns the connection and the file's identity."""
        identity = _trust.prepare(path)
        conn: sqlite3.Connection | None = None
        try:
            with _trust.private_umask():  # SQLite creates -wal and -shm here: 0600 from birth
                conn = self._connect(path)
                _use_wal(conn)
            for side in _trust.files(path)[1:]:
                _trust.check_file(side)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn, identity

    def open(self) -> None:
        """Check the file is ours (see nbtasks.stores._trust), then open and migrate it."""
        if self.memory:
            self._writer = self._connect()
            self._migrate(self._writer)
            return
        self._abs = os.path.abspath(self.path)  # not resolve(): a symlink must be seen, not followed
        try:
            self._writer, self._identity = self._open_file(Path(self._abs))
            with self._lock:
                self._migrate(self._writer)
            self._intake = _intake.Intake(_intake.path_for(self._abs), self._open_file)
            self._intake.open()
            self._folder = _trust.FolderWatch(os.path.dirname(self._abs))
            with self._lock:
                self._fold_stored(self._writer, self._intake)
        except BaseException as exc:
            if self._intake is not None:
                self._intake.close()
                self._intake = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            # "file is not a database", "database disk image is malformed": the file itself is
            # wrong, so say which file. A failing migration statement stays SQLite's own error.
            if type(exc) is sqlite3.DatabaseError:
                raise StoreError(f"{self.path}: {exc}") from exc
            raise

    @property
    def lost(self) -> StoreError | None:
        """Why the file can no longer be written (deleted or replaced), or None. Unlike a held
        lock or a full disk this never passes: a writer must not retry it."""
        return self._lost

    def check_identity(self, intake: bool = False) -> None:
        """Raise StoreError if the file (or with `intake`, the intake's file, which a cell's
        `trigger()` writes) was deleted or replaced since open(): checked before every
        commit, which is where writing into the void must stop.

        One stat() of their folder when it has not changed since both files were last found
        to be ours (`_trust.FolderWatch`); else one of each file. An intake found deleted
        stops only what writes into it: batches and the writer go on into the store's file.
        """
        if self._lost is not None:
            raise StoreError(str(self._lost))  # a fresh one: re-raising one would grow its traceback
        if self._identity is None:
            return
        folder = self._folder  # None while the store is opening: its files are checked alone
        key = folder.look() if folder is not None else None
        if folder is not None and folder.unchanged(key):
            return
        error = _trust.identity_error(self._abs, self._identity)
        if error is not None:
            self._lost = error
            raise error
        problem = self._intake.identity_problem() if self._intake is not None else None
        if problem is None:
            if folder is not None:
                folder.trust(key)
        elif intake:
            raise problem

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}; this nbtasks knows up to "
                    f"{SCHEMA_VERSION}. Upgrade nbtasks to open it."
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {v}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _fold_stored(self, conn: sqlite3.Connection, intake: _intake.Intake) -> None:
        """At open: fold what the intake still holds (runs a killed kernel triggered, or
        another kernel's not folded yet) into `runs`, then delete it there. A row that is
        not a run's row (a damaged file) is left out with a warning; the rest is folded."""
        stored = intake.stored()
        good = [entry for entry in stored if _intake.is_run_row(entry[1])]
        if len(good) < len(stored):
            bad = [row[0] for _, row in stored if not _intake.is_run_row(row)]
            _log.warning("%s: left out %d intake rows that are not runs' rows (ids %s)",
                         intake.path, len(bad), ", ".join(map(repr, bad)))
        if good:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _insert_fresh(conn, [row for _, row in good], "INSERT OR IGNORE")
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        intake.forget(stored, now=True)
        intake.renew_if_outdated()

    @property
    def schema_version(self) -> int:
        return int(self.select("PRAGMA user_version")[1][0][0])

    def write(self, batch: WriteBatch) -> None:
        self._transaction(batch, each=False)

    def write_each(self, batch: WriteBatch) -> list[Refused]:
        return self._transaction(batch, each=True)

    def _transaction(self, batch: WriteBatch, *, each: bool) -> list[Refused]:
        """One transaction on this thread's connection (the engine's writer thread and a cell
        committing its own trigger each have one). The process-wide lock keeps our own threads
        from meeting in SQLite's busy handler, which sleeps in steps of up to 100 ms."""
        if self._writer is None or self._closed:
            raise RuntimeError("store is not open")
        intake = self._intake
        if batch.intake and intake is not None and not each and len(batch.runs) == 1 and not (
                batch.updates or batch.attempts or batch.logs or batch.waitpoints or batch.statements):
            self.check_identity(intake=True)
            intake.append(batch.runs[0])  # a cell's new run: into the intake, folded later
            return []
        self.check_identity()
        conn = self._reader()
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise StoreError(f"{self.path}: database is locked (another write of this "
                             f"process held it for {self.busy_timeout:g}s)")
        folding: list[_intake.Entry] = []
        try:
            if not (each or (intake is not None and intake.has_pending())) and len(
                    batch.runs) == 1 and not (batch.updates or batch.attempts or batch.logs
                                              or batch.waitpoints or batch.statements):
                # One new run: one statement is its own transaction. Two calls fewer, and
                # each call lets the GIL go to the busy engine thread for a while.
                if batch.fresh:
                    _insert_fresh(conn, batch.runs)
                else:
                    conn.execute(multi_sql(_RUN_UPSERT, len(RUN_COLUMNS), 1), batch.runs[0])
                return []
            conn.execute("BEGIN IMMEDIATE")
            # Taken only once the file's lock is ours: a fold in flight then commits without
            # waiting for anyone, so a read may wait for it (`settle`).
            folding = intake.take() if intake is not None else []
            refused = (_apply_each(conn, batch, folding) if each
                       else _apply(conn, batch, folding))
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            if folding and intake is not None:
                intake.give_back(folding)
            if isinstance(exc, sqlite3.Error) and passing(exc):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise
        finally:
            self._lock.release()
        if folding and intake is not None:
            intake.folded(folding)
        return refused

    def settle(self) -> None:
        """Fold what this process put in the intake into `runs` now, so that a read sees
        every run a `trigger()` returned for. Before every read of this store, and before a
        DataFrame is read from the file by another process.

        If the writer is folding those rows, the read waits for its commit, however slow the
        machine. If the store's file is locked by another process, the read waits 0.1 s for
        it and then reads without them: they stay durable in the intake, and the writer folds
        them once it can (it takes rows only once it holds the file's lock)."""
        intake = self._intake
        if intake is None or self._closed or self._writer is None:
            return
        target = intake.appended
        if intake.committed >= target:
            return
        if not self._lock.acquire(timeout=_SETTLE_WAIT_MS / 1000):
            # The writer holds it: folding these rows (wait for its commit), or waiting for
            # another process's lock before it takes them (give up soon).
            intake.wait_folded(target, _SETTLE_WAIT_MS / 1000, self.busy_timeout)
            return
        conn = self._writer
        folding: list[_intake.Entry] = []
        try:
            conn.execute(f"PRAGMA busy_timeout = {_SETTLE_WAIT_MS}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                folding = intake.take()
                _insert_fresh(conn, [row for _, row in folding], "INSERT OR IGNORE")
                conn.execute("COMMIT")
            except BaseException as exc:
                _rollback(conn)
                if folding:
                    intake.give_back(folding)  # the writer folds them, row by row if it must
                if not isinstance(exc, sqlite3.Error | UnicodeError | ValueError | TypeError
                                  | OverflowError):
                    raise
                return
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        finally:
            self._lock.release()
        if folding:
            intake.folded(folding)

    def _reader(self) -> sqlite3.Connection:
        if self.memory:
            assert self._writer is not None
            return self._writer
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.check_identity()  # a new thread must not read a file put in the store's place
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def select(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        if self._closed:
            raise RuntimeError("store is closed")
        if self._intake is not None:
            self.settle()
        if self.memory:
            with self._lock:
                return _query(self._reader(), sql, params)
        return _query(self._reader(), sql, params)

    def select_dicts(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cols, rows = self.select(sql, params)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def close(self) -> None:
        if self._closed:
            return
        intake = self._intake
        if intake is not None:
            if intake.has_pending():
                self.settle()  # what is not folded now is folded at the next open
            intake.forget([], now=True)
        self._closed = True
        if intake is not None:
            intake.close()
        with self._lock, self._readers_lock:
            for conn in [*self._readers, self._writer]:
                if conn is not None:
                    conn.close()
            self._readers.clear()


def open_store(store: str | os.PathLike[str] | Store | None) -> Store:
    """A path, ":memory:", or a ready Store object; opened and migrated."""
    if store is None:
        store = ".nbtasks/runs.db"
    if isinstance(store, str | os.PathLike):
        s: Store = SQLiteStore(store)
    else:
        s = store
    s.open()
    return s
