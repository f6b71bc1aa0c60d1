"""RunStatus and its one transition function, walked over every pair of statuses."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from nbtasks import EngineError, Run, RunStatus
from nbtasks._status import InvalidTransitionError, is_final, transition

S = RunStatus

# Written out by hand from Trigger.dev's status table and docs/design.md; the code's table is not consulted.
# CANCELED, CRASHED, SYSTEM_FAILURE and INTERRUPTED can end any run that is not final yet.
ENDINGS = {S.CANCELED, S.CRASHED, S.SYSTEM_FAILURE, S.INTERRUPTED}
EXPECTED: dict[RunStatus, set[RunStatus]] = {
    S.DELAYED: {S.QUEUED, *ENDINGS},
    S.QUEUED: {S.EXECUTING, S.EXPIRED, S.WAITING_FOR_DEPLOY, *ENDINGS},
    # After a kernel restart a run whose task is not defined yet waits for its cell; its retry
    # is decided then (REATTEMPTING, or FAILED with no attempts left).
    S.WAITING_FOR_DEPLOY: {S.QUEUED, S.EXPIRED, S.REATTEMPTING, S.FAILED, *ENDINGS},
    S.EXECUTING: {S.REATTEMPTING, S.WAITING, S.COMPLETED, S.FAILED, S.TIMED_OUT, *ENDINGS},
    S.REATTEMPTING: {S.EXECUTING, S.WAITING_FOR_DEPLOY, S.FAILED, *ENDINGS},
    S.WAITING: {S.EXECUTING, S.REATTEMPTING, S.FAILED, S.TIMED_OUT, S.WAITING_FOR_DEPLOY,
                *ENDINGS},
    S.COMPLETED: set(),
    S.CANCELED: set(),
    S.FAILED: set(),
    S.CRASHED: set(),
    S.SYSTEM_FAILURE: set(),
    S.INTERRUPTED: set(),
    S.EXPIRED: set(),
    S.TIMED_OUT: set(),
}
FINAL = {S.COMPLETED, S.CANCELED, S.FAILED, S.CRASHED, S.SYSTEM_FAILURE, S.INTERRUPTED,
         S.EXPIRED, S.TIMED_OUT}


def test_the_status_names() -> None:
    assert [s.value for s in RunStatus] == [
        "QUEUED", "DELAYED", "WAITING_FOR_DEPLOY", "EXECUTING", "REATTEMPTING", "WAITING",
        "COMPLETED", "CANCELED", "FAILED", "CRASHED", "SYSTEM_FAILURE", "INTERRUPTED", "EXPIRED",
        "TIMED_OUT",
    ]
    assert isinstance(S.QUEUED, str) and S.QUEUED == "QUEUED"
    assert set(EXPECTED) == set(RunStatus)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(RunStatus, RunStatus)),
                         ids=lambda s: s.value)
def test_every_pair(current: RunStatus, new: RunStatus) -> None:
    if new in EXPECTED[current]:
        assert transition(current, new) is new
    else:
        with pytest.raises(InvalidTransitionError, match=f"{current.value} -> {new.value}"):
            transition(current, new)


def test_counts_of_the_walk() -> None:
    allowed = sum(1 for a, b in itertools.product(RunStatus, RunStatus) if b in EXPECTED[a])
    assert allowed == 5 + 7 + 8 + 9 + 7 + 9  # DELAYED, QUEUED, WFD, EXECUTING, REATT., WAITING
    assert all(not EXPECTED[s] for s in FINAL)


def test_final_statuses_never_change_and_is_final_agrees() -> None:
    for status in RunStatus:
        assert is_final(status) is (status in FINAL)
    for status in FINAL:
        for new in RunStatus:
            with pytest.raises(InvalidTransitionError):
                transition(status, new)


def test_invalid_transition_is_an_engine_error() -> None:
    assert issubclass(InvalidTransitionError, EngineError)


def _run(status: RunStatus) -> Run:
    return Run(id="run_x", task_id="t", status=status, created_at=datetime(2026, 1, 1, tzinfo=UTC))


BOOLEANS = {
    # status: (is_queued, is_executing, is_completed, is_success, is_failed, is_cancelled)
    S.QUEUED: (True, False, False, False, False, False),
    S.DELAYED: (True, False, False, False, False, False),
    S.WAITING_FOR_DEPLOY: (True, False, False, False, False, False),
    S.EXECUTING: (False, True, False, False, False, False),
    S.REATTEMPTING: (False, True, False, False, False, False),
    S.WAITING: (False, True, False, False, False, False),
    S.COMPLETED: (False, False, True, True, False, False),
    S.CANCELED: (False, False, True, False, True, True),
    S.FAILED: (False, False, True, False, True, False),
    S.CRASHED: (False, False, True, False, True, False),
    S.SYSTEM_FAILURE: (False, False, True, False, True, False),
    S.INTERRUPTED: (False, False, True, False, True, False),
    S.EXPIRED: (False, False, True, False, True, False),   # completed, unlike v3 (docs/design.md, decision 6)
    S.TIMED_OUT: (False, False, True, False, True, False),
}


@pytest.mark.parametrize("status", list(RunStatus), ids=lambda s: s.value)
def test_run_booleans(status: RunStatus) -> None:
    run = _run(status)
    got = (run.is_queued, run.is_executing, run.is_completed, run.is_success, run.is_failed,
           run.is_cancelled)
    assert got == BOOLEANS[status]


def test_run_snapshot_is_frozen_and_duration_ms() -> None:
    run = Run(id="run_x", task_id="t", status=S.COMPLETED,
              created_at=datetime(2026, 1, 1, tzinfo=UTC),
              started_at=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
              finished_at=datetime(2026, 1, 1, 0, 0, 3, 500000, tzinfo=UTC))
    assert run.duration_ms == 2500
    assert _run(S.QUEUED).duration_ms is None
    with pytest.raises(ValueError, match="frozen"):
        run.status = S.FAILED  # type: ignore[misc]
