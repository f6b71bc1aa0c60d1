"""When the store refuses a row: only the run it belongs to pays (docs/design.md, decision 10).

The writer leaves a refused row out of its commit and reports it here, on the engine loop. A
run that was never recorded is withdrawn: it never starts, and whoever waits for it gets a
StoreError. A recorded run is failed with a StoreError saying why, and its rows from then on
are written with any text SQLite can't encode escaped, so that correction itself gets in.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._errors import StoreError
from ._lifecycle import error_record
from ._payload import dumps
from ._runstate import RunState
from ._status import RunStatus
from .stores._base import Refused

if TYPE_CHECKING:
    from ._scheduler import Scheduler

S = RunStatus
_log = logging.getLogger("nbtasks")


def withdraw(sched: Scheduler, run: RunState, error: StoreError) -> None:
    """The run's first commit was refused: it was never recorded and never starts. Its
    waiters (and the trigger call, if it still waits) get `error`."""
    run.withdrawn = error
    remember(sched, run)
    for t in (run.timer, run.ttl_timer):
        if t is not None:
            t.cancel()
    run.timer = run.ttl_timer = None
    sched.untrack(run)
    if run.idempotency_key is not None and \
            sched.idempotency.get((run.task_id, run.idempotency_key)) is run:
        del sched.idempotency[(run.task_id, run.idempotency_key)]
    parent = sched.active.get(run.parent_id) if run.parent_id is not None else None
    if parent is not None and run in parent.children:
        parent.children.remove(run)
    waiters, run.waiters = run.waiters, []
    for fn in waiters:
        fn(run)


def remember(sched: Scheduler, run: RunState) -> None:
    """Keep a withdrawn run findable: a waiter that comes late gets its error, not "not found"
    (or an old row read back from a lost file)."""
    sched.withdrawn[run.id] = run
    while len(sched.withdrawn) > 1000:  # only the last few
        del sched.withdrawn[next(iter(sched.withdrawn))]


def store_refused(sched: Scheduler, refused: list[Refused]) -> None:
    """The writer left rows out of a commit because the store refused them (text SQLite
    can't encode, a value out of its range). Only the runs they belong to pay for it."""
    path = getattr(sched.writer.store, "path", "the store")
    for r in refused:
        run = sched.active.get(r.run_id) if r.run_id is not None else None
        if run is not None:
            run.stored = None  # the row it kept may be the one left out: next, write them all
        if run is None or run.durable:
            _log.error("nbtasks: the store refused a %s row%s and left it out: %s", r.kind,
                       f" of run {r.run_id}" if r.run_id else "", r.reason)
            continue
        if not run.recorded:
            withdraw(sched, run, StoreError(
                f"{path}: run {run.id} of {run.task_id!r} could not be recorded, so it was "
                f"not started: {r.reason}"))
            continue
        _fail_unstorable(sched, run, r, path)


def _fail_unstorable(sched: Scheduler, run: RunState, r: Refused, path: str) -> None:
    err = StoreError(f"{path}: the store refused this run's {r.kind} record ({r.reason}), "
                     "so the run is failed rather than left with a record that is not true")
    record = error_record(err)
    record["traceback"] = ""
    run.escape = True  # its rows from now on are written with any bad text escaped
    if not run.is_final:
        sched.stop(run, S.FAILED, "store", record)
        return
    # Final in memory but neither on disk nor announced: its after-commit work waits for
    # this correction, so nobody ever hears the outcome that could not be stored.
    run.status = S.FAILED  # not a transition: the state it replaces never existed outside
    run.output_json = None
    run.error = record
    run.updated_at = sched.clock.now()
    sched.writer.mark(run)
    sched.writer.statement(
        "UPDATE attempts SET status = 'FAILED', error_type = ?, error_message = ?, error = ? "
        "WHERE run_id = ? AND number = ?",
        (record["type"], record["message"], dumps(record), run.id, run.attempt_count))
    sched.emit("status", run)


def store_lost(sched: Scheduler, error: StoreError) -> None:
    """The store's file was deleted or replaced: no state can be made durable any more.

    Nothing more starts (a run's start could never be recorded). A run never recorded is
    withdrawn; every other active run's waiters get `error` now, and any that come later get it
    too, instead of waiting for a commit that can't happen. Runs already executing go on, and
    their ends are not written: a new engine starts a new history.
    """
    sched.dispatcher.limit = 0
    for run in list(sched.active.values()):
        if not run.recorded:
            withdraw(sched, run, error)
            continue
        if run.withdrawn is None:
            run.withdrawn = error
        waiters, run.waiters = run.waiters, []
        for fn in waiters:
            fn(run)
    _log.error("nbtasks: %s. Runs in flight can't be recorded; their waiters get a StoreError.",
               error)
