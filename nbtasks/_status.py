"""RunStatus and the one function that moves it.

Every status change in the engine goes through `transition()`, so a final status can never be
left and no run can skip from QUEUED to COMPLETED without executing.

>>> transition(RunStatus.QUEUED, RunStatus.EXECUTING)
<RunStatus.EXECUTING: 'EXECUTING'>
>>> transition(RunStatus.COMPLETED, RunStatus.EXECUTING)
Traceback (most recent call last):
...
nbtasks._status.InvalidTransitionError: COMPLETED -> EXECUTING is not a valid run transition
"""

from __future__ import annotations

from enum import StrEnum

from ._errors import EngineError


class RunStatus(StrEnum):
    """The public run statuses (Trigger.dev's API names; WAITING is v4's name for a parked run)."""

    QUEUED = "QUEUED"
    DELAYED = "DELAYED"
    WAITING_FOR_DEPLOY = "WAITING_FOR_DEPLOY"
    EXECUTING = "EXECUTING"
    REATTEMPTING = "REATTEMPTING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    SYSTEM_FAILURE = "SYSTEM_FAILURE"
    INTERRUPTED = "INTERRUPTED"
    EXPIRED = "EXPIRED"
    TIMED_OUT = "TIMED_OUT"


S = RunStatus

FINAL: frozenset[RunStatus] = frozenset(
    {S.COMPLETED, S.CANCELED, S.FAILED, S.CRASHED, S.SYSTEM_FAILURE, S.INTERRUPTED, S.EXPIRED,
     S.TIMED_OUT}
)
QUEUED_LIKE: frozenset[RunStatus] = frozenset({S.QUEUED, S.DELAYED, S.WAITING_FOR_DEPLOY})
EXECUTING_LIKE: frozenset[RunStatus] = frozenset({S.EXECUTING, S.REATTEMPTING, S.WAITING})
FAILED_LIKE: frozenset[RunStatus] = FINAL - {S.COMPLETED}

#: Where a run may go from each non-final status. Final statuses map to nothing.
_ENDINGS = frozenset({S.CANCELED, S.CRASHED, S.SYSTEM_FAILURE, S.INTERRUPTED})
ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    S.DELAYED: frozenset({S.QUEUED}) | _ENDINGS,
    S.QUEUED: frozenset({S.EXECUTING, S.EXPIRED, S.WAITING_FOR_DEPLOY}) | _ENDINGS,
    # After a kernel restart a run may wait for its task's cell before its retry is decided
    # (REATTEMPTING or, with no attempts left, FAILED); a waiting run may wait for it too.
    S.WAITING_FOR_DEPLOY: frozenset({S.QUEUED, S.EXPIRED, S.REATTEMPTING, S.FAILED}) | _ENDINGS,
    S.EXECUTING: frozenset(
        {S.REATTEMPTING, S.WAITING, S.COMPLETED, S.FAILED, S.TIMED_OUT}
    ) | _ENDINGS,
    S.REATTEMPTING: frozenset({S.EXECUTING, S.WAITING_FOR_DEPLOY, S.FAILED}) | _ENDINGS,
    S.WAITING: frozenset(
        {S.EXECUTING, S.FAILED, S.TIMED_OUT, S.REATTEMPTING, S.WAITING_FOR_DEPLOY}
    ) | _ENDINGS,
}
for _final in FINAL:
    ALLOWED[_final] = frozenset()


class InvalidTransitionError(EngineError):
    """Raised by transition() for a move the run state machine does not allow."""


def transition(current: RunStatus, new: RunStatus) -> RunStatus:
    """Return `new` if a run may move there from `current`, else raise InvalidTransitionError."""
    if new in ALLOWED[current]:
        return new
    raise InvalidTransitionError(f"{current.value} -> {new.value} is not a valid run transition")


def is_final(status: RunStatus) -> bool:
    """True for statuses that never change again (EXPIRED and TIMED_OUT included)."""
    return status in FINAL
