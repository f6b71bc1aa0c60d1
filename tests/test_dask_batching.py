"""What travels per run on Dask: a quiet run posts one event (its outcome, never fetched as a
result), and a chatty one batches its lines instead of posting one event per line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine

distributed = pytest.importorskip("distributed")

from nbtasks.executors import DaskExecutor  # noqa: E402 - after the importorskip

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0",
                                  resources={"CPU": 1, "MEMORY": 1e9}) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def executor(client: Any) -> DaskExecutor:
    return DaskExecutor(client)


@pytest.fixture
def dask_engine(db_path: Path, executor: DaskExecutor) -> Iterator[Engine]:
    with Engine(store=str(db_path), executor=executor) as eng:
        yield eng


def events(client: Any, topic: str) -> int:
    return len(client.get_events(topic))


def test_a_quiet_run_costs_one_event_and_no_result_fetch(dask_engine: Engine,
                                                         executor: DaskExecutor,
                                                         client: Any) -> None:
    quiet = dask_engine.task(id="quiet", machine="micro", run=lambda p, ctx: p + 1)
    assert quiet.trigger(1).wait(timeout=60).output == 2  # warm: the worker is up
    fetched: list[Any] = []
    real_gather = client.gather

    def gather(*args: Any, **kwargs: Any) -> Any:
        fetched.append(args)
        return real_gather(*args, **kwargs)

    client.gather = gather
    try:
        before = events(client, executor.topic)
        results = [quiet.trigger(i).wait(timeout=60).output for i in range(5)]
    finally:
        del client.gather
    assert results == [1, 2, 3, 4, 5]
    assert events(client, executor.topic) - before == 5
    assert fetched == []


def test_a_chatty_run_batches_its_lines(dask_engine: Engine, executor: DaskExecutor,
                                        client: Any) -> None:
    @dask_engine.task(id="chatty", machine="micro")
    def chatty(payload: int, ctx: Any) -> int:
        for i in range(payload):
            nbtasks.logger.info(f"line {i}")
        return payload

    before = events(client, executor.topic)
    result = chatty.trigger(300).wait(timeout=60)
    assert result.ok, result.error
    _, rows = dask_engine.store.select("SELECT message FROM logs WHERE run_id = ? ORDER BY rowid",
                                       (result.id,))
    assert [r[0] for r in rows] == [f"line {i}" for i in range(300)]
    assert events(client, executor.topic) - before < 300 / 5
