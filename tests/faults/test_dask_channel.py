"""The Dask event channel is open to every client of the scheduler: the kernel must trust none
of what is posted there. A second, hostile Client posts forged messages on the executor's topic
and on the scheduler's "all" topic while a real run waits on its worker."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks._status import is_final

distributed = pytest.importorskip("distributed")

from nbtasks.executors import DaskExecutor  # noqa: E402 - after the importorskip

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=":0",
                                  resources={"CPU": 2, "MEMORY": 4e9}) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def attacker(cluster: Any) -> Iterator[Any]:
    """Another client of the same scheduler: it can post to any topic and read any topic."""
    with distributed.Client(cluster.scheduler_address) as other:
        yield other


@pytest.fixture
def executor(client: Any) -> DaskExecutor:
    return DaskExecutor(client)


@pytest.fixture
def dask_engine(db_path: Path, executor: DaskExecutor) -> Iterator[Engine]:
    eng = Engine(store=str(db_path), executor=executor)
    try:
        yield eng
    finally:
        eng.close()


class WritesAFile:
    """A pickle that, when loaded, writes a file: what "code execution" looks like here."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start_waiting_run(eng: Engine, client: Any) -> tuple[Any, Any, str, str]:
    """A run on the cluster that logs a line, then waits for a token; its Dask key and worker."""
    token = eng.wait.create_token(timeout="1m")

    async def body(token_id: str, ctx: Any) -> str:
        nbtasks.logger.info("started")
        got = await nbtasks.wait.for_token(token_id)
        return f"resumed with {got.output}"

    task = eng.task(id="waits", machine="micro", run=body, retry=None)
    handle = task.trigger(token.id)
    until(lambda: eng.runs.retrieve(handle.id).status is RunStatus.WAITING)
    processing = {key: worker for worker, keys in client.processing().items() for key in keys
                  if str(key).startswith(f"nbtasks-{handle.id}-")}
    assert len(processing) == 1
    [(key, worker)] = processing.items()
    return handle, token, str(key), worker


def log_lines(eng: Engine, run_id: str) -> list[str]:
    _, rows = eng.store.select("SELECT message FROM logs WHERE run_id = ? ORDER BY rowid",
                               (run_id,))
    return [r[0] for r in rows]


def test_a_forged_call_carrying_a_pickle_runs_nothing_in_the_kernel(
        dask_engine: Engine, executor: DaskExecutor, client: Any, attacker: Any,
        tmp_path: Path) -> None:
    handle, token, key, worker = start_waiting_run(dask_engine, client)
    planted = tmp_path / "pwned"
    blob = pickle.dumps(WritesAFile(planted))
    topic = executor.topic
    # The shapes a worker's message had, and could have: a bare call, one in a batch with a
    # made-up seal, a log line, and the pickle where the JSON arguments go.
    attacker.log_event(topic, ["call", key, 1, "status", blob, worker])
    attacker.log_event(topic, ['{"src":"x","seq":1,"msgs":[["log","' + key
                               + '","info","forged",null]]}', "0" * 64])
    attacker.log_event(topic, ["log", key, "info", "forged", None])
    attacker.log_event(topic, {"msgs": [["call", key, 2, "status", blob, worker]]})
    # Everything the scheduler sends the kernel's client comes in order: these forged events
    # arrive before the run's result, which needs the token completed first.
    assert dask_engine.wait.complete_token(token, "ok")
    result = handle.wait(timeout=60)
    assert result.ok, result.error
    assert result.output == "resumed with ok"
    assert not planted.exists()
    assert log_lines(dask_engine, handle.id) == ["started"]


def test_a_replayed_batch_is_dropped(dask_engine: Engine, executor: DaskExecutor, client: Any,
                                     attacker: Any) -> None:
    handle, token, _key, _worker = start_waiting_run(dask_engine, client)
    until(lambda: log_lines(dask_engine, handle.id) == ["started"])
    sealed = [event for _, event in attacker.get_events(executor.topic)]
    assert sealed, "the run's own batches are visible to every client"
    for event in sealed:  # posted again, seal and all
        attacker.log_event(executor.topic, event)
    assert dask_engine.wait.complete_token(token, "ok")
    assert handle.wait(timeout=60).ok
    assert log_lines(dask_engine, handle.id) == ["started"]


def test_a_forged_worker_loss_does_not_touch_a_waiting_run(
        dask_engine: Engine, client: Any, attacker: Any, caplog: pytest.LogCaptureFixture) -> None:
    handle, token, key, worker = start_waiting_run(dask_engine, client)
    caplog.set_level(logging.WARNING, logger="nbtasks.machines")
    for address in (worker, "tcp://127.0.0.1:9"):  # the real worker (alive), and a made-up one
        attacker.log_event("all", {"action": "remove-worker", "worker": address,
                                   "processing-tasks": [key]})

    def ignored() -> int:
        return sum("ignored a remove-worker event" in r.getMessage() for r in caplog.records)

    # Either the kernel checked both with the scheduler and ignored them, or it believed one.
    until(lambda: ignored() >= 2 or is_final(dask_engine.runs.retrieve(handle.id).status))
    assert dask_engine.runs.retrieve(handle.id).status is RunStatus.WAITING
    assert dask_engine.wait.complete_token(token, "still here")
    result = handle.wait(timeout=60)
    assert result.ok, result.error
    assert result.output == "resumed with still here"
    assert dask_engine.runs.retrieve(handle.id).attempt_count == 1


def test_requests_carry_json_and_say_what_cannot_travel(dask_engine: Engine) -> None:
    """Trigger options with datetimes and durations cross as tagged JSON; an object JSON can't
    say fails in the run's own code, on the worker, with a clear error."""
    from datetime import UTC, datetime, timedelta

    child = dask_engine.task(id="child", run=lambda p, ctx: p * 2)

    @dask_engine.task(id="parent", machine="micro", retry=None)
    async def parent(payload: None, ctx: Any) -> list[Any]:
        later = child.trigger(1, delay=datetime.now(UTC) + timedelta(hours=1),
                              ttl=timedelta(hours=2), tags=("a", "b"))
        now = await child.trigger_and_wait(21, delay=timedelta(0))
        try:
            child.trigger(1, metadata={"x": object()})
        except TypeError as exc:
            refused = str(exc)
        else:
            refused = ""
        return [later.id, now.unwrap(), refused]

    result = parent.trigger(None).wait(timeout=60)
    assert result.ok, result.error
    later_id, doubled, refused = result.output
    assert doubled == 42
    later = dask_engine.runs.retrieve(later_id)
    assert later.status is RunStatus.DELAYED and sorted(later.tags) == ["a", "b"]
    assert "object can't be sent to the kernel" in refused
