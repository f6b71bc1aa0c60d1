"""Kernel-restart recovery: adopt the runs of kernels that died, and replay waits durably.

An engine registers itself (owner id, pid, host, process start time) in the store. On start it
looks for registered engines on this host whose process is gone (a zombie counts as gone), and
for active runs whose owner is not registered at all (an engine that closed while runs were in
flight), and takes their non-final runs and pending wait tokens over in one transaction; the
UPDATE matches on the dead owner, so two kernels starting at once cannot both adopt a run.

What happens to each adopted run is the scheduler's `adopt` (docs/design.md, decision 7): QUEUED and DELAYED
runs keep their recorded times; an EXECUTING attempt failed with its kernel and is retried under
its task's policy; a WAITING attempt is resumed, that is run again under the same number.

Resuming works because a run's waits are durable and addressed by their order within the
attempt: the k-th wait of attempt n of run R is `R:n:k`.

- `wait.for_`/`wait.until` record their target time; replayed, a wait whose time has passed
  returns at once, and one still ahead ends at the recorded time, not a new one.
- `trigger_and_wait`/`batch_trigger_and_wait` give their children ids derived from that
  address, so the replay finds the children it already triggered and waits for them instead of
  triggering new ones.
- `wait.create_token` inside a run derives the token id the same way, so `for_token` replayed
  waits on the same token (a completed one returns at once).

The attempt's code runs again from the top, so what it does between waits must be safe to
repeat, and it must make its waits in the same order. Plain `trigger()` calls inside it are not
deduplicated unless they pass an idempotency key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from functools import partial
from typing import TYPE_CHECKING, Any

import psutil

from ._errors import KernelRestartError
from ._lifecycle import error_record
from ._payload import dumps
from ._runstate import _ALPHABET, RUN_COLUMNS, AttemptState, RunState
from ._status import RunStatus, transition
from .stores._base import WriteBatch
from .stores.sqlite import _FINAL_SQL

if TYPE_CHECKING:
    from ._engine import Engine
    from ._scheduler import Scheduler

S = RunStatus
_log = logging.getLogger("nbtasks")


def _alive(pid: int, started: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def dead_owners(engine: Engine) -> list[str]:
    """Owners whose runs nobody is driving: dead engines on this host, and unregistered ones."""
    from ._engine import LIVE_OWNERS

    host = socket.gethostname()
    me = os.getpid()
    dead = []
    _, rows = engine.store.select("SELECT owner, pid, host, process_started FROM engines")
    for owner, pid, owner_host, started in rows:
        if owner == engine.owner or owner_host != host:
            continue
        if pid == me:
            if owner not in LIVE_OWNERS:
                dead.append(owner)
        elif not _alive(pid, started):
            dead.append(owner)
    _, rows = engine.store.select(
        f"SELECT DISTINCT owner FROM runs WHERE status NOT IN {_FINAL_SQL} AND owner NOT IN "
        "(SELECT owner FROM engines)")
    dead.extend(r[0] for r in rows if r[0] != engine.owner)
    return dead


def recover(engine: Engine) -> int:
    """Register this engine and adopt orphaned runs and tokens. Runs on the engine loop at start.

    Returns how many runs were adopted.
    """
    proc = psutil.Process()
    dead = dead_owners(engine)
    batch = WriteBatch(statements=[(
        "INSERT OR REPLACE INTO engines (owner, pid, host, started_at, process_started) "
        "VALUES (?, ?, ?, ?, ?)",
        (engine.owner, os.getpid(), socket.gethostname(), engine.clock.now(), proc.create_time()),
    )])
    if dead:
        marks = ", ".join("?" * len(dead))
        batch.statements += [
            (f"UPDATE runs SET owner = ? WHERE owner IN ({marks}) AND status NOT IN {_FINAL_SQL}",
             (engine.owner, *dead)),
            (f"DELETE FROM engines WHERE owner IN ({marks})", tuple(dead)),
        ]
    batch.statements.append((
        "UPDATE waitpoints SET owner = ? WHERE kind = 'token' AND status = 'WAITING' AND "
        "(owner IS NULL OR owner NOT IN (SELECT owner FROM engines))", (engine.owner,)))
    engine.store.write(batch)
    cols, rows = engine.store.select(
        f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, a.started_at AS attempt_started, "
        "(SELECT MAX(l.ts) FROM logs l WHERE l.run_id = r.id AND l.ts >= a.started_at) "
        "AS last_log "
        "FROM runs r LEFT JOIN attempts a ON a.run_id = r.id AND a.number = r.attempt_count "
        f"WHERE r.owner = ? AND r.status NOT IN {_FINAL_SQL} ORDER BY r.seq", (engine.owner,))
    replays = _recorded_waits(engine)
    unreadable: list[tuple[str, str]] = []
    for row in rows:
        record = dict(zip(cols, row, strict=True))
        try:
            run = RunState.from_row(record)
        except (ValueError, TypeError) as exc:  # one odd row must not keep the engine down
            unreadable.append((str(record["id"]), f"{type(exc).__name__}: {exc}"))
            continue
        if run.status is RunStatus.WAITING or run.retrying == "resume":
            run.replay = replays.get((run.id, run.attempt_count), {})
        adopt(engine.scheduler, run, record["attempt_started"],
              last_alive=max(record["last_log"] or 0.0, record["updated_at"] or 0.0) or None)
    if unreadable:
        _give_up(engine, unreadable)
    return len(rows) - len(unreadable)


def _give_up(engine: Engine, unreadable: list[tuple[str, str]]) -> None:
    """Runs whose rows can't be read back (edited by hand, or written by a bug) can't be
    resumed: each ends as SYSTEM_FAILURE with the reason, so it is not owed again at the next
    start, and a warning names them."""
    now = engine.clock.now()
    engine.store.write(WriteBatch(statements=[(
        "UPDATE runs SET status = 'SYSTEM_FAILURE', error = ?, finished_at = ?, updated_at = ?, "
        "recovery = NULL WHERE id = ?",
        (dumps({"type": "UndecodableRow", "message": "recovery could not read this run's row: "
                + reason, "traceback": ""}), now, now, run_id)) for run_id, reason in unreadable]))
    _log.warning("nbtasks could not resume %d run(s) whose rows can't be read; they are marked "
                 "SYSTEM_FAILURE: %s", len(unreadable),
                 "; ".join(f"{run_id} ({reason})" for run_id, reason in unreadable[:5]))


def _recorded_waits(engine: Engine) -> dict[tuple[str, int], dict[int, float]]:
    """Target times of the waits made by attempts to resume, by (run id, attempt number)."""
    _, rows = engine.store.select(
        "SELECT w.id, w.resume_at FROM waitpoints w JOIN runs r ON r.id = w.run_id "
        f"WHERE w.kind = 'wait' AND r.owner = ? AND r.status NOT IN {_FINAL_SQL} "
        "AND (r.status = 'WAITING' OR r.recovery = 'resume')", (engine.owner,))
    out: dict[tuple[str, int], dict[int, float]] = {}
    for wp_id, resume_at in rows:
        try:
            run_id, attempt, seq = str(wp_id).rsplit(":", 2)
            out.setdefault((run_id, int(attempt)), {})[int(seq)] = float(resume_at)
        except (ValueError, TypeError):  # not a wait this version made: nothing to replay
            continue
    return out


# --------------------------------------------------------------------------- durable waits


def derived_id(prefix: str, address: str) -> str:
    """A stable id for the thing made at `address` (`run:attempt:seq[:i]`), in run-id format."""
    n = int.from_bytes(hashlib.sha256(address.encode()).digest(), "big")
    chars = []
    for _ in range(21):
        n, i = divmod(n, len(_ALPHABET))
        chars.append(_ALPHABET[i])
    return prefix + "".join(chars)


def next_address(run: RunState) -> str:
    """The address of the next durable wait of `run`'s current attempt."""
    run.wait_seq += 1
    return f"{run.id}:{run.attempt_count}:{run.wait_seq}"


def wait_target(engine: Engine, run: RunState, when: float) -> tuple[float, bool]:
    """When a `wait.for_`/`until` made inside `run` ends, and whether that was replayed.

    First time: `when`, recorded. Resumed after a restart: the recorded time.
    The record rides in the same commit as the run's WAITING status, so a run stored as
    WAITING always has the targets of its waits on disk.
    """
    address = next_address(run)
    if run.replay is not None:
        recorded = run.replay.get(run.wait_seq)
        if recorded is not None:
            return recorded, True
    if when > engine.clock.now():
        row: tuple[Any, ...] = (address, run.id, "wait", "WAITING", engine.clock.now(), when,
                                None, None, None, None, engine.owner, None)
        engine.writer.waitpoint(address, row)
    return when, False


def child_ids(run: RunState, count: int) -> list[str]:
    """Ids for the `count` children of one `trigger_and_wait`/batch call made inside `run`."""
    address = next_address(run)
    return [derived_id("run_", f"{address}:{i}") for i in range(count)]


def token_id(run: RunState) -> str:
    """The id of a wait token created inside `run` without an idempotency key."""
    return derived_id("waitpoint_", next_address(run))


def existing_runs(engine: Engine, parent: RunState, run_ids: list[str]) -> set[str]:
    """Which of `run_ids` this engine drives or the store holds (a resumed attempt's children).

    Live ones become the parent's children again, so cancelling the parent cancels them.
    """
    active = engine.scheduler.active
    found = {i for i in run_ids if i in active}
    parent.children += [active[i] for i in found if active[i] not in parent.children]
    rest = [i for i in run_ids if i not in found]
    for start in range(0, len(rest), 500):
        chunk = rest[start:start + 500]
        _, rows = engine.store.select(
            f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", tuple(chunk))
        found.update(r[0] for r in rows)
    return found


def adopt(sched: Scheduler, run: RunState, attempt_started: float | None = None,
          last_alive: float | None = None) -> None:
    """Take over a run left non-final by a dead kernel; its recorded times are kept.

    An attempt that was executing died with its kernel: it is recorded as failed with
    KernelRestartError and ended at its last sign of life (`last_alive`: its last log line or
    row write; not now, which would count the time the kernel was down as run time). The run's
    retry is decided under its task's policy once the task is defined (WAITING_FOR_DEPLOY until
    then). An attempt that was waiting is resumed: it runs again under the same number and its
    recorded waits return at once or at their recorded times (see this module's docstring).
    Both marks are stored, so a second restart before they are acted on still knows what is
    owed.
    """
    sched.track(run)
    run.owner = sched.owner
    run.seq = next(sched.seq)
    if run.idempotency_key is not None:
        sched.idempotency[(run.task_id, run.idempotency_key)] = run
    now = sched.clock.now()
    machine = run.machine or "kernel"
    started = attempt_started or run.started_at or run.updated_at
    if run.status is S.WAITING:
        run.retrying = "resume"
    if run.retrying == "resume":
        run.attempt = AttemptState(run.attempt_count, started, machine, run.queue)
    elif run.status is S.EXECUTING:
        record = error_record(KernelRestartError(
            f"the kernel stopped while attempt {run.attempt_count} was executing"))
        record["traceback"] = ""
        attempt = AttemptState(run.attempt_count, started, machine, run.queue)
        attempt.finished_at = (now if started is None else
                               min(now, max(started, last_alive or started)))
        attempt.status = "FAILED"
        attempt.error = record
        sched.writer.mark_attempt(run, attempt)
        run.error = record
        run.status = transition(run.status, S.REATTEMPTING)
        run.delay_until = None
        run.retrying = "restart"
        run.updated_at = now
    sched.writer.mark(run)
    if not sched.config.resume:
        sched.held.append(run)
        return
    schedule_recovered(sched, run)

def schedule_recovered(sched: Scheduler, run: RunState) -> None:
    """Arm an adopted run: owed work goes first, recorded delays and retries keep their time."""
    if run.retrying:
        sched.enqueue(run, front=True)
    elif run.status in (S.DELAYED, S.REATTEMPTING) and run.delay_until is not None:
        run.timer = sched.clock.call_at(
            run.delay_until, partial(sched.enqueue, run, run.status is S.REATTEMPTING))
    else:
        sched.enqueue(run, front=run.status is S.REATTEMPTING)
