"""Shared fixtures: engines on a real SQLite file in a temp dir, and a manual clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import nbtasks
from nbtasks import Engine, RunEvent, RunStatus
from nbtasks.testing import ManualClock

if TYPE_CHECKING:  # the dashboard loads ipywidgets, which `import nbtasks` must not
    from nbtasks.notebook.dashboard import Dashboard


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / ".nbtasks" / "runs.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    """A real engine on a real SQLite file, with the real clock."""
    eng = Engine(store=str(db_path))
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture
def dash(engine: Engine) -> Iterator[Dashboard]:
    """A dashboard on `engine` whose buttons act (five rows a page), closed after the test.
    test_dashboard.py overrides it with the default (read-only where served) one."""
    from nbtasks.notebook.dashboard import Dashboard

    d = Dashboard(engine, page_size=5, read_only=False)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def clocked(db_path: Path, clock: ManualClock) -> Iterator[Engine]:
    """A real engine on a real SQLite file whose time only moves with `clock.advance()`."""
    eng = Engine(store=str(db_path), clock=clock)
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture(autouse=True)
def _reset_default_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Module-level API calls get a fresh default engine in this test's temp dir."""
    monkeypatch.chdir(tmp_path)
    yield
    from nbtasks._configure import reset

    reset()


def pytest_configure(config: pytest.Config) -> None:
    # Keep the module importable for the type checker's sake in fixtures above.
    assert nbtasks.Engine is Engine


@pytest.fixture
def wait_status() -> Callable[..., RunStatus]:
    """`wait_status(engine, run_id, *statuses, timeout=10)`: block until the run reaches one.

    Event-driven (an engine subscriber), so tests sequence on real state changes, not sleeps.
    """

    def _wait(eng: Engine, run_id: str, *statuses: RunStatus, timeout: float = 10.0) -> RunStatus:
        hit = threading.Event()

        def on_event(event: RunEvent) -> None:
            if event.run_id == run_id and event.status in statuses:
                hit.set()

        unsubscribe = eng.subscribe(on_event)
        try:
            if eng.status_of(run_id) not in statuses and not hit.wait(timeout):
                raise AssertionError(
                    f"{run_id} did not reach {[s.value for s in statuses]} in {timeout}s; "
                    f"it is {eng.status_of(run_id).value}")
            return eng.status_of(run_id)
        finally:
            unsubscribe()

    return _wait


@pytest.fixture
def process_engine(db_path: Path) -> Iterator[Callable[..., Engine]]:
    """`process_engine(clock=None, max_workers=2)`: an engine whose presets run in small pools.

    Pools are kept small: the test host has few cores, and every worker is a real process.
    """
    from nbtasks.executors import ProcessExecutor

    made: list[Engine] = []

    def make(clock: ManualClock | None = None, max_workers: int = 2) -> Engine:
        eng = Engine(store=str(db_path), clock=clock,
                     executor=ProcessExecutor(max_workers=max_workers))
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.close()
