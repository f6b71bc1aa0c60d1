"""The engine's in-memory state of one active run, and its row in the store.

Only runs that are not final (plus the few just finishing) live in memory; history lives in the
store, so 100,000 finished runs cost the kernel nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._clock import TimerHandle, to_datetime
from ._context import CancelSignal
from ._errors import StoreError
from ._payload import _short, dumps, loads
from ._status import FINAL, RunStatus
from ._text import escape_row

if TYPE_CHECKING:
    from ._models import Run

_ALPHABET = "123456789abcdefghijkmnopqrstuvwxyz"
_SUFFIXES = 34**12
# Ids are names, not secrets: a userspace generator seeded from the OS avoids a getrandom()
# syscall per id, which (dropping the GIL) would stall a trigger loop behind the engine thread.
_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


#: Every 2-character string of the alphabet, by the number it encodes (34**2 of them): an id
#: is a few table lookups instead of 21 divmods, on the path of every trigger. (Triples would
#: save one more divmod but cost 2.5 MB and 30 ms at import.)
_PAIR = 34**2
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)

_last_prefix: tuple[int, str] = (-1, "")


def _time_prefix(ms: int) -> str:
    global _last_prefix
    last_ms, text = _last_prefix  # one tuple read: safe while other threads make ids too
    if ms == last_ms:
        return text
    n, e = divmod(ms % 34**9, _PAIR)  # 34**9 ms reaches the year 3900
    n, d = divmod(n, _PAIR)
    n, c = divmod(n, _PAIR)
    a, b = divmod(n, _PAIR)
    pairs = _PAIRS
    text = _ALPHABET[a] + pairs[b] + pairs[c] + pairs[d] + pairs[e]
    _last_prefix = (ms, text)
    return text


def new_id(prefix: str) -> str:
    """`run_` + 21 characters of Trigger.dev's friendly-id alphabet.

    The first 9 encode the creation time in milliseconds, so ids sort by age and the store's
    primary-key index grows at its end instead of splitting random pages; the other 12 are
    random (34**12 ids per millisecond).
    """
    # 96 random bits folded onto 34**12: as uniform as randrange to one part in 2**34, and
    # one C call instead of randrange's Python loop.
    n, f = divmod(_rng.getrandbits(96) % _SUFFIXES, _PAIR)
    n, e = divmod(n, _PAIR)
    n, d = divmod(n, _PAIR)
    n, c = divmod(n, _PAIR)
    a, b = divmod(n, _PAIR)
    pairs = _PAIRS
    return "".join((prefix, _time_prefix(time.time_ns() // 1_000_000),
                    pairs[a], pairs[b], pairs[c], pairs[d], pairs[e], pairs[f]))


RUN_COLUMNS = (
    "id", "task_id", "status", "payload", "output", "error", "attempt_count", "created_at",
    "started_at", "finished_at", "updated_at", "delay_until", "ttl", "queued_at", "tags",
    "metadata", "parent_id", "root_id", "batch_id", "is_test", "idempotency_key",
    "idempotency_expires_at", "concurrency_key", "queue", "machine", "max_attempts",
    "max_duration", "priority", "owner", "seq", "recovery", "replayed_from",
)

ATTEMPT_COLUMNS = (
    "run_id", "number", "status", "started_at", "finished_at", "machine", "queue",
    "error_type", "error_message", "error",
)


class AttemptState:
    __slots__ = ("error", "finished_at", "machine", "number", "queue", "started_at", "status")

    def __init__(self, number: int, started_at: float, machine: str, queue: str) -> None:
        self.number = number
        self.started_at = started_at
        self.finished_at: float | None = None
        self.status = "EXECUTING"
        self.machine = machine
        self.queue = queue
        self.error: dict[str, Any] | None = None

    def row(self, run_id: str) -> tuple[Any, ...]:
        err = self.error
        return (
            run_id, self.number, self.status, self.started_at, self.finished_at, self.machine,
            self.queue, err.get("type") if err else None, err.get("message") if err else None,
            dumps(err) if err else None,
        )


class RunState:
    """Mutable, slot-only, touched only on the engine loop."""

    __slots__ = (
        "_children",
        "_waiters",
        "attempt",
        "attempt_count",
        "attempt_task",
        "batch_id",
        "concurrency_key",
        "created_at",
        "delay_until",
        "durable",
        "error",
        "escape",
        "finished_at",
        "holds_slot",
        "id",
        "idempotency_expires_at",
        "idempotency_key",
        "in_queue",
        "is_test",
        "machine",
        "max_attempts",
        "max_duration",
        "metadata",
        "output_json",
        "owner",
        "parent_id",
        "payload_json",
        "priority",
        "queue",
        "queued_at",
        "recorded",
        "replay",
        "replayed_from",
        "resume",
        "retrying",
        "root_id",
        "seq",
        "signal",
        "started_at",
        "starts",
        "status",
        "stored",
        "tags",
        "task_id",
        "timer",
        "ttl",
        "ttl_timer",
        "updated_at",
        "wait_depth",
        "wait_seq",
        "withdrawn",
    )

    def __init__(self, run_id: str, task_id: str, payload_json: str, now: float) -> None:
        self.id = run_id
        self.task_id = task_id
        self.payload_json = payload_json
        self.status = RunStatus.QUEUED
        self.output_json: str | None = None
        self.error: dict[str, Any] | None = None
        self.attempt_count = 0
        self.created_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.updated_at = now
        self.delay_until: float | None = None
        self.ttl: float | None = None
        self.queued_at = now
        self.tags: list[str] = []
        self.metadata: dict[str, Any] = {}
        self.parent_id: str | None = None
        self.root_id: str | None = None
        self.batch_id: str | None = None
        self.is_test = False
        self.idempotency_key: str | None = None
        self.idempotency_expires_at: float | None = None
        self.concurrency_key: str | None = None
        self.queue = f"task/{task_id}"
        self.machine: str | None = None
        self.max_attempts: int | None = None
        self.max_duration: float | None = None
        self.priority = 0.0
        self.owner = ""
        self.seq = 0
        self.replayed_from: str | None = None  # the run this one replays, if any
        # runtime only, never stored
        self.attempt: AttemptState | None = None
        self.attempt_task: asyncio.Task[None] | None = None
        # Made on first use: most runs have neither children nor waiters, and two empty lists
        # per run were a third of what a burst of 20,000 held runs gave the garbage collector
        # to walk on every full collection (a pause of the engine loop too).
        self._children: list[RunState] | None = None
        self.durable = False
        #: Its row has been committed at least once: only then may an attempt start.
        self.recorded = False
        #: Set when its first commit was refused: it never ran and never will.
        self.withdrawn: StoreError | None = None
        #: The store refused a row of it once: its rows are written with text escaped.
        self.escape = False
        #: The row last committed for it by this kernel, while it is not final: the store
        #: then updates only the columns that changed since (an update's cost in SQLite grows
        #: with the columns it names). None: unknown, the next update names them all.
        self.stored: tuple[Any, ...] | None = None
        self.holds_slot = False
        self.resume: asyncio.Future[None] | None = None
        # Stored as `recovery`. "restart": the attempt died with its kernel and its retry is
        # still to be decided; "resume": its waiting attempt is to be re-run, waits replayed.
        self.retrying = ""
        self.replay: dict[int, float] | None = None  # recorded wait targets, when resuming
        self.wait_seq = 0  # durable waits made so far by the current attempt
        self.signal: CancelSignal | None = None
        self.timer: TimerHandle | None = None
        self.ttl_timer: TimerHandle | None = None
        self.wait_depth = 0
        self._waiters: list[Callable[[RunState], None]] | None = None
        self.in_queue = False  # waiting in the dispatcher for a slot
        self.starts = 0  # slots given so far: tells a start deferred to the next turn is stale

    @property
    def children(self) -> list[RunState]:
        """Runs triggered inside this one and still active (a cancel ends them too)."""
        if self._children is None:
            self._children = []
        return self._children

    @children.setter
    def children(self, value: list[RunState]) -> None:
        self._children = value

    @property
    def waiters(self) -> list[Callable[[RunState], None]]:
        """Called once this run is final and durable."""
        if self._waiters is None:
            self._waiters = []
        return self._waiters

    @waiters.setter
    def waiters(self, value: list[Callable[[RunState], None]]) -> None:
        self._waiters = value

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    def row(self) -> tuple[Any, ...]:
        if self.escape:
            return escape_row(self._row())
        return self._row()

    def _row(self) -> tuple[Any, ...]:
        # The status as plain text: a tuple of text, numbers and None only is one the garbage
        # collector stops tracking, and the intake keeps a new run's row until it is folded.
        # (`_value_` is the member's own attribute; `.value` is a descriptor call.)
        return (
            self.id, self.task_id, self.status._value_, self.payload_json, self.output_json,
            dumps(self.error) if self.error else None, self.attempt_count, self.created_at,
            self.started_at, self.finished_at, self.updated_at, self.delay_until, self.ttl,
            self.queued_at, dumps(self.tags) if self.tags else None,
            dumps(self.metadata) if self.metadata else None, self.parent_id, self.root_id,
            self.batch_id, int(self.is_test), self.idempotency_key,
            self.idempotency_expires_at, self.concurrency_key, self.queue, self.machine,
            self.max_attempts, self.max_duration, self.priority, self.owner, self.seq,
            self.retrying or None, self.replayed_from,
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunState:
        """Rebuild from a stored row (recovery after a kernel restart).

        Raises ValueError naming the column when the row can't be a run's (an unknown status,
        JSON that doesn't parse or has the wrong shape, text where a number belongs): such a
        run would fail later, on the engine loop, far from its cause.
        """
        for name in ("id", "task_id", "payload"):
            if not isinstance(row[name], str):
                raise ValueError(f"{name} is {row[name]!r}, not text")
        run = cls(row["id"], row["task_id"], row["payload"], _number(row, "created_at"))
        run.recorded = True
        for name in RUN_COLUMNS:
            if name in ("id", "task_id", "payload"):
                continue
            value = row[name]
            if name in _NUMBERS:
                value = _number(row, name)
            elif name == "status":
                value = RunStatus(value)
            elif name == "output":
                run.output_json = value
                continue
            elif name == "error":
                value = loads(value)
                if value is not None and not isinstance(value, dict):
                    raise ValueError(f"error is {_short(value)}, not an object")
            elif name in ("tags", "metadata"):
                value = loads(value) or ([] if name == "tags" else {})
                if name == "tags" and not (isinstance(value, list)
                                           and all(isinstance(t, str) for t in value)):
                    raise ValueError(f"tags is {_short(value)}, not a list of strings")
                if name == "metadata" and not isinstance(value, dict):
                    raise ValueError(f"metadata is {_short(value)}, not an object")
            elif name == "is_test":
                value = bool(value)
            elif name == "recovery":
                run.retrying = value or ""
                continue
            setattr(run, name, value)
        return run


#: Columns holding a number. Only the first two may not be NULL; NULL priority and seq (rows
#: of an older version) read as 0.
_NUMBERS = {"attempt_count": int, "created_at": float, "started_at": float, "finished_at": float,
            "updated_at": float, "delay_until": float, "ttl": float, "queued_at": float,
            "idempotency_expires_at": float, "max_attempts": int, "max_duration": float,
            "priority": float, "seq": int}
_REQUIRED = {"attempt_count", "created_at"}
_DEFAULTS = {"priority": 0.0, "seq": 0}


def _number(row: dict[str, Any], name: str) -> Any:
    value = row[name]
    if value is None and name not in _REQUIRED:
        return _DEFAULTS.get(name)
    kind = _NUMBERS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            kind is int and not isinstance(value, int)) or value != value:
        raise ValueError(f"{name} is {_short(value)}, not a number")
    return value


def run_model(row: dict[str, Any], attempts: list[dict[str, Any]] | None = None) -> Run:
    """A stored row as the public frozen `Run` snapshot."""
    from ._models import Attempt, Run

    return Run(
        id=row["id"], task_id=row["task_id"], status=RunStatus(row["status"]),
        payload=loads(row["payload"]), output=loads(row["output"]), error=loads(row["error"]),
        attempt_count=row["attempt_count"], created_at=datetime.fromtimestamp(row["created_at"], UTC),
        started_at=to_datetime(row["started_at"]), finished_at=to_datetime(row["finished_at"]),
        updated_at=to_datetime(row["updated_at"]), delay_until=to_datetime(row["delay_until"]),
        tags=loads(row["tags"]) or [], metadata=loads(row["metadata"]) or {},
        parent_id=row["parent_id"], root_id=row["root_id"], batch_id=row["batch_id"],
        is_test=bool(row["is_test"]), idempotency_key=row["idempotency_key"],
        concurrency_key=row["concurrency_key"], queue=row["queue"] or "",
        replayed_from=row.get("replayed_from"),
        machine=row["machine"] or "kernel",
        attempts=[
            Attempt(
                run_id=a["run_id"], number=a["number"], status=a["status"],
                started_at=to_datetime(a["started_at"]), finished_at=to_datetime(a["finished_at"]),
                machine=a["machine"] or "kernel", queue=a["queue"] or "", error=loads(a["error"]),
            )
            for a in attempts or []
        ],
    )
