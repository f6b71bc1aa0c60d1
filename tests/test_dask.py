"""Presets on a real Dask LocalCluster with two worker processes.

The cluster declares CPU and MEMORY resources, so presets map onto them; queues, retries and
the store stay in the kernel.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus

distributed = pytest.importorskip("distributed")

from nbtasks.executors import DaskExecutor  # noqa: E402 - after the importorskip

pytestmark = pytest.mark.timeout(120)

GB = 10**9  # a preset's GB, as Dask counts it


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", resources={"CPU": 2, "MEMORY": 4 * GB})
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def dask_engine(db_path: Path, client: Any) -> Iterator[Engine]:
    eng = Engine(store=str(db_path), executor=DaskExecutor(client))
    try:
        yield eng
    finally:
        eng.close()


def worker_pids(client: Any) -> set[int]:
    return set(client.run(os.getpid).values())


def test_a_preset_run_goes_to_the_cluster_with_its_resources(dask_engine: Engine,
                                                             client: Any) -> None:
    offset = 10

    @dask_engine.task(id="on-dask", machine="micro")
    def on_dask(payload: int, ctx: Any) -> dict[str, Any]:
        worker = distributed.get_worker()
        restrictions = worker.state.tasks[worker.get_current_task()].resource_restrictions
        print("hello from dask")
        nbtasks.metadata.set("where", "cluster")
        nbtasks.tags.add("dask")
        return {"value": payload + offset, "pid": os.getpid(), "machine": ctx.machine.name,
                "resources": restrictions}

    result = on_dask.trigger(1).wait(timeout=60)
    assert result.ok, result.error
    out = result.output
    assert out is not None
    assert out["value"] == 11 and out["machine"] == "micro"
    assert out["resources"] == {"CPU": 0.25, "MEMORY": 0.25 * GB}
    assert out["pid"] in worker_pids(client) and out["pid"] != os.getpid()
    run = dask_engine.runs.retrieve(result.id)
    assert run.metadata == {"where": "cluster"} and run.tags == ["dask"]
    _, logs = dask_engine.store.select("SELECT message FROM logs WHERE run_id = ?", (result.id,))
    assert ("hello from dask",) in logs


def test_a_preset_no_worker_can_hold_fails_at_once(dask_engine: Engine) -> None:
    big = dask_engine.task(id="big", machine="large-1x", run=lambda p, ctx: "ran")
    result = big.trigger(None).wait(timeout=30)
    assert result.status is RunStatus.FAILED
    assert "large-1x" in str(result.error) and "resources" in str(result.error)
    assert dask_engine.runs.retrieve(result.id).attempt_count == 1


def test_a_run_on_the_cluster_waits_on_a_child_through_the_kernel(dask_engine: Engine) -> None:
    @dask_engine.task(id="child", machine="micro")
    def child(payload: int, ctx: Any) -> int:
        return payload * 2

    @dask_engine.task(id="parent", machine="small-1x")
    async def parent(payload: int, ctx: Any) -> list[Any]:
        got = await child.trigger_and_wait(payload)
        await nbtasks.wait.for_(seconds=0.05)
        return [got.unwrap(), ctx.run.id]

    result = parent.trigger(21).wait(timeout=60)
    assert result.output == [42, result.id]
    kids = dask_engine.runs.list(task_id="child")
    assert [k.parent_id for k in kids] == [result.id]


def test_waiting_runs_give_their_dask_thread_back(dask_engine: Engine, client: Any) -> None:
    """Two workers with one thread each run a chain of four nested waits: each waiting parent
    secedes from its worker's pool, or the chain would stall at the third."""
    assert sum(client.nthreads().values()) == 2

    @dask_engine.task(id="chain", machine="micro")
    async def chain(depth: int, ctx: Any) -> int:
        if depth == 0:
            return 0
        return 1 + (await chain.trigger_and_wait(depth - 1)).unwrap()

    @dask_engine.task(id="sync-chain", machine="micro")
    def sync_chain(depth: int, ctx: Any) -> int:
        if depth == 0:
            return 0
        return 1 + int(sync_chain.trigger(depth - 1).wait(timeout=60).unwrap())

    assert chain.trigger(3).wait(timeout=60).output == 3
    assert sync_chain.trigger(3).wait(timeout=60).output == 3


def test_a_dead_dask_worker_fails_the_attempt_which_is_retried(dask_engine: Engine,
                                                               tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"

    @dask_engine.task(id="fragile", machine="micro",
                      retry={"max_attempts": 3, "min_timeout_in_ms": 10, "randomize": False})
    def fragile(payload: None, ctx: Any) -> int:
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return ctx.attempt.number

    result = fragile.trigger(None).wait(timeout=90)
    assert result.ok, result.error
    attempts = dask_engine.runs.retrieve(result.id).attempts
    assert attempts[0].status == "FAILED"
    assert attempts[0].error is not None and attempts[0].error["type"] == "WorkerCrashedError"
    assert attempts[-1].status == "COMPLETED" and result.output == len(attempts)


def test_cancel_reaches_the_run_on_its_worker(dask_engine: Engine, tmp_path: Path,
                                              wait_status: Callable[..., RunStatus]) -> None:
    cleaned = tmp_path / "cleaned"

    async def spin(payload: None, ctx: Any) -> None:
        nbtasks.metadata.set("started", True)
        await asyncio.Event().wait()  # until cancelled

    task = dask_engine.task(id="spin", machine="micro", run=spin,
                            cleanup=lambda p, ctx: cleaned.write_text(str(ctx.signal.reason)))
    handle = task.trigger(None)
    deadline = time.monotonic() + 60
    while not dask_engine.runs.retrieve(handle.id).metadata.get("started"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert handle.cancel()
    assert handle.wait(timeout=10).status is RunStatus.CANCELED
    while not cleaned.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert cleaned.read_text() == "cancel"


def test_the_extra_is_named_when_distributed_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import importlib
    import sys

    real_import = builtins.__import__

    def no_distributed(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    monkeypatch.delitem(sys.modules, "nbtasks.executors.dask")
    with pytest.raises(ImportError, match=r"pip install nbtasks\[dask\]"):
        importlib.import_module("nbtasks.executors.dask")
