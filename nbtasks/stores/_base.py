"""The store protocol: a handful of methods any history back-end implements.

The engine never reads the store on its hot path; it writes through one group-commit writer
(`WriteBatch` per transaction) and reads only for retrieve/list/recovery and DataFrames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class WriteBatch:
    """Everything one transaction writes. Rows are tuples in the store's column order."""

    runs: list[tuple[Any, ...]] = field(default_factory=list)
    #: Whole rows of runs already stored (committed before): a store may write only the
    #: columns a run's life changes. A row it finds missing is written whole all the same.
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    #: For each row of `updates` (same order; may be shorter), the row last committed for
    #: that run, or None if unknown: a store may then write only the columns that differ.
    previous: list[tuple[Any, ...] | None] = field(default_factory=list)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    logs: list[tuple[Any, ...]] = field(default_factory=list)
    waitpoints: list[tuple[Any, ...]] = field(default_factory=list)
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    #: Every row in `runs` is a new run's first: a store may insert it plainly (no upsert),
    #: and an id already stored is then a refusal rather than an overwrite.
    fresh: bool = False
    #: A cell waits for these new runs (a `trigger()` loop): a store may make them durable in
    #: a cheaper place first and fold them into its history soon after (the SQLite store's
    #: intake), as long as every read of the store sees them once this write returned.
    intake: bool = False

    def __bool__(self) -> bool:
        return bool(self.runs or self.updates or self.attempts or self.logs or self.waitpoints
                    or self.statements)


@dataclass(frozen=True, slots=True)
class Refused:
    """A row `write_each` left out. `kind`: run, attempt, log, waitpoint or statement;
    `run_id` the run it belongs to (None for a statement or a token); `reason` the store's error."""

    kind: str
    run_id: str | None
    reason: str


class Store(Protocol):
    """A run history. Reads may come from any thread; `write` only from the writer thread."""

    path: str

    def open(self) -> None:
        """Create or migrate the schema. Idempotent."""
        ...

    def write(self, batch: WriteBatch) -> None:
        """Apply `batch` in one transaction on the calling thread's connection; durable when
        this returns.

        Raises `StoreError` when the store can't be written now (a lock held past the busy
        timeout, a full disk, an I/O error): nothing of the batch is applied, and the same
        batch may be tried again. Any other exception means a row of the batch is refused by
        the store itself (text it can't encode, a value out of range): `write_each` finds it.
        """
        ...

    def write_each(self, batch: WriteBatch) -> list[Refused]:
        """Apply `batch` in one transaction row by row, leaving out the rows the store refuses.

        Returns what was left out (an empty list when everything was written). Raises
        `StoreError` as `write` does, with nothing applied.
        """
        ...

    def select(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a read query; returns (column names, rows). Empty rows when nothing matches."""
        ...

    def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...
