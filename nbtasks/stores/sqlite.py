"""SQLite history: WAL, a busy timeout, owner-only files, JSON columns, a versioned schema.

`.nbtasks/runs.db` next to the notebook by default; `":memory:"` for an ephemeral store. Two
kernels may open the same file: WAL lets readers run beside the one writer, and the busy
timeout makes a writer wait for the other kernel's commit instead of failing.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .._runstate import ATTEMPT_COLUMNS, RUN_COLUMNS
from ._base import Store, WriteBatch

SCHEMA_VERSION = 3
_FINAL_SQL = (
    "('COMPLETED','CANCELED','FAILED','CRASHED','SYSTEM_FAILURE','INTERRUPTED','EXPIRED','TIMED_OUT')"
)

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
}

_RUN_UPSERT = (
    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES {{values}} "
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in RUN_COLUMNS[1:])
)
_ATTEMPT_UPSERT = f"INSERT OR REPLACE INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES {{values}}"
_LOG_INSERT = "INSERT INTO logs (run_id, ts, level, message, attributes) VALUES {values}"
#: Rows per statement. A few fixed sizes keep the statements in sqlite3's cache: a statement
#: made for every batch size would be parsed afresh each commit. 512 x 30 columns stays under
#: SQLite's 32,766 bound parameters.
_CHUNKS = (512, 128, 32, 8, 1)


@functools.lru_cache(maxsize=64)
def _multi_sql(template: str, width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(values=", ".join([row] * count))


def _insert_many(conn: sqlite3.Connection, template: str, rows: list[tuple[Any, ...]]) -> None:
    """Many rows per statement: one sqlite3_step for hundreds of rows.

    executemany() steps once per row and drops the GIL around every step; with the engine loop
    busy on another thread, each step then waits for the GIL to come back. One statement per
    chunk keeps the writer from stalling behind the loop.
    """
    if not rows:
        return
    width = len(rows[0])
    i, n = 0, len(rows)
    for size in _CHUNKS:
        if n - i < size:
            continue
        sql = _multi_sql(template, width, size)
        while n - i >= size:
            conn.execute(sql, [v for r in rows[i:i + size] for v in r])
            i += size
WAITPOINT_COLUMNS = ("id", "run_id", "kind", "status", "created_at", "resume_at", "timeout_at",
                     "completed_at", "output", "tags", "owner", "data")
_WAITPOINT_UPSERT = (
    f"INSERT OR REPLACE INTO waitpoints ({', '.join(WAITPOINT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(WAITPOINT_COLUMNS))})"
)


def _create_private(path: Path) -> None:
    """Make the folder 0700 and the file 0600 before SQLite opens it (its -wal/-shm copy the mode)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)


class SQLiteStore:
    """The default store. Thread-safe: one writer connection, one reader per thread."""

    def __init__(self, path: str | os.PathLike[str] = ".nbtasks/runs.db") -> None:
        self.path = str(path)
        self.memory = self.path == ":memory:"
        self._lock = threading.RLock()
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: index pages of a big history stay hot
        if not self.memory:
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
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

    def open(self) -> None:
        if not self.memory:
            _create_private(Path(self.path).resolve())
        self._writer = self._connect()
        if not self.memory:
            self._use_wal(self._writer)
        with self._lock:
            try:
                self._migrate(self._writer)
            except BaseException:
                self._writer.close()
                self._writer = None
                raise

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
            conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return int(self.select("PRAGMA user_version")[1][0][0])

    def write(self, batch: WriteBatch) -> None:
        conn = self._writer
        if conn is None:
            raise RuntimeError("store is not open")
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _insert_many(conn, _RUN_UPSERT, batch.runs)
                _insert_many(conn, _ATTEMPT_UPSERT, batch.attempts)
                _insert_many(conn, _LOG_INSERT, batch.logs)
                if batch.waitpoints:
                    conn.executemany(_WAITPOINT_UPSERT, batch.waitpoints)
                for sql, params in batch.statements:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _reader(self) -> sqlite3.Connection:
        if self.memory:
            assert self._writer is not None
            return self._writer
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def select(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        if self._closed:
            raise RuntimeError("store is closed")
        if self.memory:
            with self._lock:
                cur = self._reader().execute(sql, params)
                return [d[0] for d in cur.description or ()], cur.fetchall()
        cur = self._reader().execute(sql, params)
        return [d[0] for d in cur.description or ()], cur.fetchall()

    def select_dicts(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cols, rows = self.select(sql, params)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
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
