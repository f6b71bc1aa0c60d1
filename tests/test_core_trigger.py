"""Triggering: the run handle, Result and unwrap, batches, trigger by id, parents and roots."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

import nbtasks
from nbtasks import (
    BatchHandle,
    BatchResult,
    ConfigurationError,
    Engine,
    Result,
    RunHandle,
    RunStatus,
    RunWaitTimeoutError,
    SubtaskUnwrapError,
    TaskRunError,
    UnknownTaskError,
)

WaitStatus = Callable[..., RunStatus]
RUN_ID = re.compile(r"^run_[123456789abcdefghijkmnopqrstuvwxyz]{21}$")


def test_handle_id_task_id_and_live_status(engine: Engine, wait_status: WaitStatus) -> None:
    release = threading.Event()

    @engine.task(id="gated")
    def gated(payload: Any, ctx: Any) -> str:
        release.wait(10)
        return "done"

    handle = gated.trigger(None)
    assert isinstance(handle, RunHandle)
    assert RUN_ID.match(handle.id), handle.id
    assert handle.task_id == "gated"
    assert not handle.is_cached
    wait_status(engine, handle.id, RunStatus.EXECUTING)
    assert handle.status is RunStatus.EXECUTING
    assert not handle.is_final
    release.set()
    assert handle.wait(timeout=10).ok
    assert handle.status is RunStatus.COMPLETED
    assert handle.is_final


def test_ids_are_unique_and_use_the_friendly_alphabet(engine: Engine) -> None:
    @engine.task(id="noop")
    async def noop(payload: Any, ctx: Any) -> None:
        return None

    ids = [h.id for h in noop.batch_trigger(list(range(200)))]
    assert len(set(ids)) == 200
    assert all(RUN_ID.match(i) for i in ids)


def test_wait_timeout_raises_and_the_run_goes_on(engine: Engine) -> None:
    release = threading.Event()

    @engine.task(id="slow")
    def slow(payload: Any, ctx: Any) -> int:
        release.wait(10)
        return 7

    handle = slow.trigger(None)
    with pytest.raises(RunWaitTimeoutError) as info:
        handle.wait(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert handle.status is not RunStatus.CANCELED
    release.set()
    assert handle.wait(timeout=10).output == 7


def test_handle_cancel_and_replay(engine: Engine, wait_status: WaitStatus) -> None:
    release = threading.Event()

    @engine.task(id="replayable")
    def replayable(payload: dict[str, int], ctx: Any) -> int:
        if not release.is_set():
            ctx.signal.wait(10)
        return payload["n"] * 2

    first = replayable.trigger({"n": 5}, tags=["t1"])
    wait_status(engine, first.id, RunStatus.EXECUTING)
    assert first.cancel() is True
    assert first.status is RunStatus.CANCELED
    assert first.cancel() is False  # already final: a no-op that says so
    release.set()
    again = first.replay()
    assert again.id != first.id and again.task_id == "replayable"
    assert again.wait(timeout=10).output == 10
    assert engine.runs.retrieve(again.id).tags == ["t1"]
    assert first.replay({"n": 1}).wait(timeout=10).output == 2


def test_awaiting_a_handle_from_another_event_loop(engine: Engine) -> None:
    @engine.task(id="awaitable")
    async def awaitable(payload: int, ctx: Any) -> int:
        return payload + 1

    async def main() -> Result[Any]:
        return await awaitable.trigger(1)

    assert asyncio.run(main()).output == 2


def test_trigger_and_wait_result_success(engine: Engine) -> None:
    @engine.task(id="square")
    async def square(payload: int, ctx: Any) -> int:
        return payload * payload

    result = asyncio.run(square.trigger_and_wait(9))
    assert isinstance(result, Result)
    assert result.ok and result.error is None
    assert result.output == 81 and result.unwrap() == 81
    assert result.task_id == "square" and RUN_ID.match(result.id)
    assert engine.runs.retrieve(result.id).output == 81


def test_trigger_and_wait_result_failure_and_unwrap(engine: Engine) -> None:
    @engine.task(id="explodes", retry=None)
    async def explodes(payload: Any, ctx: Any) -> None:
        raise ValueError("the fuse was short")

    result = asyncio.run(explodes.trigger_and_wait(None))
    assert not result.ok and result.output is None
    assert result.status is RunStatus.FAILED
    assert isinstance(result.error, TaskRunError)
    assert result.error.type_name == "ValueError"
    assert str(result.error) == "the fuse was short"
    assert "ValueError" in result.error.traceback
    with pytest.raises(SubtaskUnwrapError) as info:
        result.unwrap()
    err = info.value
    assert str(err) == "Error in explodes: the fuse was short"
    assert err.task_id == "explodes" and err.run_id == result.id
    assert err.cause is result.error


def test_batch_trigger_returns_handles_in_item_order(engine: Engine) -> None:
    @engine.task(id="echo")
    async def echo(payload: int, ctx: Any) -> int:
        await asyncio.sleep(0.001 * (5 - payload))  # finish out of order
        return payload

    batch = echo.batch_trigger([0, 1, 2, 3, 4])
    assert isinstance(batch, BatchHandle) and len(batch) == 5
    assert batch.id.startswith("batch_")
    results = batch.wait(timeout=10)
    assert [r.output for r in results] == [0, 1, 2, 3, 4]
    assert [r.id for r in results] == [h.id for h in batch]
    assert {engine.runs.retrieve(h.id).batch_id for h in batch} == {batch.id}


def test_batch_trigger_and_wait_keeps_order_and_failures_do_not_raise(engine: Engine) -> None:
    @engine.task(id="odd-fails", retry=None)
    async def odd_fails(payload: int, ctx: Any) -> int:
        if payload % 2:
            raise RuntimeError(f"odd {payload}")
        return payload * 10

    result = asyncio.run(odd_fails.batch_trigger_and_wait([0, 1, 2, 3]))
    assert isinstance(result, BatchResult) and len(result) == 4
    assert [r.ok for r in result] == [True, False, True, False]
    assert [r.output for r in result] == [0, None, 20, None]
    assert [str(r.error) for r in result if not r.ok] == ["odd 1", "odd 3"]


def test_batch_limits(engine: Engine) -> None:
    @engine.task(id="batched")
    async def batched(payload: int, ctx: Any) -> int:
        return payload

    with pytest.raises(ConfigurationError, match="no items"):
        batched.batch_trigger([])
    with pytest.raises(ConfigurationError, match="Batch size of 501 is too large"):
        batched.batch_trigger(list(range(501)))
    with pytest.raises(ConfigurationError, match="Batch size of 501"):
        asyncio.run(batched.batch_trigger_and_wait(list(range(501))))
    assert engine.runs.count(task_id="batched") == 0
    full = batched.batch_trigger(list(range(500)))
    assert [r.output for r in full.wait(timeout=30)] == list(range(500))
    assert engine.runs.count(task_id="batched") == 500


def test_batch_item_options(engine: Engine) -> None:
    @engine.task(id="item-options")
    async def item_options(payload: int, ctx: Any) -> list[str]:
        return list(ctx.run.tags)

    batch = item_options.batch_trigger([1, nbtasks.BatchItem(2, tags=["own"])], tags=["shared"])
    assert [r.output for r in batch.wait(timeout=10)] == [["shared"], ["own"]]


def test_a_batchs_options_are_resolved_once_for_the_items_that_set_none(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """500 items sharing the batch's options validate them once (no pydantic per item), and
    get the same values: one delay's due time, their own copies of its tags and metadata."""
    from nbtasks import _prepare

    parsed: list[dict[str, Any]] = []
    real = _prepare.parse_trigger_options

    def counting(options: dict[str, Any], **kw: Any) -> Any:
        parsed.append(options)
        return real(options, **kw)

    monkeypatch.setattr(_prepare, "parse_trigger_options", counting)

    @engine.task(id="shared-options")
    async def shared(payload: int, ctx: Any) -> None:
        return None

    items: list[Any] = [*range(499), nbtasks.BatchItem(499, tags=["own"])]
    batch = shared.batch_trigger(items, delay="1h", tags=["shared"], metadata={"k": 1}, ttl="2h")
    assert parsed == [{"delay": "1h", "tags": ["shared"], "metadata": {"k": 1}, "ttl": "2h"},
                      {"delay": "1h", "tags": ["own"], "metadata": {"k": 1}, "ttl": "2h"}]
    runs = [h._run for h in batch]  # the engine's own state of each new run
    assert all(r is not None for r in runs)
    assert len({r.delay_until for r in runs if r is not None}) == 1
    assert {r.status for r in runs if r is not None} == {RunStatus.DELAYED}
    first, second, own = runs[0], runs[1], runs[499]
    assert first is not None and second is not None and own is not None
    assert first.tags == ["shared"] and first.tags is not second.tags
    assert first.metadata == {"k": 1} and first.metadata is not second.metadata
    assert own.tags == ["own"] and own.ttl == 7200
    stored = engine.runs.list(task_id="shared-options", limit=500)
    assert len(stored) == 500 and {tuple(r.tags) for r in stored} == {("shared",), ("own",)}


def test_batch_options_every_item_overrides_are_not_looked_at(engine: Engine) -> None:
    @engine.task(id="overridden-options")
    async def overridden(payload: int, ctx: Any) -> list[str]:
        return list(ctx.run.tags)

    batch = overridden.batch_trigger([nbtasks.BatchItem(1, tags=["a"]),
                                      nbtasks.BatchItem(2, tags=["b"])], tags=5)
    assert [r.output for r in batch.wait(timeout=10)] == [["a"], ["b"]]
    with pytest.raises(ConfigurationError, match="tags"):
        overridden.batch_trigger([nbtasks.BatchItem(1, tags=["a"]), 2], tags=5)
    assert engine.runs.count(task_id="overridden-options") == 2  # the bad batch recorded nothing


def test_tasks_trigger_by_id_and_unknown_id() -> None:
    @nbtasks.task(id="core-trigger-by-id")
    async def by_id(payload: dict[str, int], ctx: Any) -> int:
        return payload["x"] + 1

    handle = nbtasks.tasks.trigger("core-trigger-by-id", {"x": 1})
    assert handle.task_id == "core-trigger-by-id"
    assert handle.wait(timeout=10).output == 2
    assert asyncio.run(nbtasks.tasks.trigger_and_wait("core-trigger-by-id", {"x": 2})).output == 3
    batch = asyncio.run(nbtasks.tasks.batch_trigger_and_wait("core-trigger-by-id",
                                                              [{"x": 3}, {"x": 4}]))
    assert [r.output for r in batch] == [4, 5]
    started = asyncio.run(nbtasks.tasks.trigger_async("core-trigger-by-id", {"x": 5}))
    assert started.wait(timeout=10).output == 6
    with pytest.raises(UnknownTaskError, match="no-such-task") as info:
        nbtasks.tasks.trigger("no-such-task", {})
    assert isinstance(info.value, LookupError)


def test_parent_and_root_ids_inside_runs(engine: Engine) -> None:
    @engine.task(id="leaf")
    async def leaf(payload: Any, ctx: Any) -> dict[str, Any]:
        return {"parent": ctx.run.parent_id, "root": ctx.run.root_id}

    @engine.task(id="middle")
    async def middle(payload: Any, ctx: Any) -> dict[str, Any]:
        inner = (await leaf.trigger_and_wait(None)).unwrap()
        fire_and_forget = leaf.trigger(None)
        return {"me": ctx.run.id, "leaf": inner, "forgotten": fire_and_forget.id}

    @engine.task(id="top")
    async def top(payload: Any, ctx: Any) -> dict[str, Any]:
        return {"me": ctx.run.id, "middle": (await middle.trigger_and_wait(None)).unwrap()}

    out = top.trigger(None).wait(timeout=10).unwrap()
    top_id, mid = out["me"], out["middle"]
    assert mid["leaf"] == {"parent": mid["me"], "root": top_id}
    mid_run = engine.runs.retrieve(mid["me"])
    assert (mid_run.parent_id, mid_run.root_id) == (top_id, top_id)
    forgotten = engine.runs.retrieve(mid["forgotten"])
    assert (forgotten.parent_id, forgotten.root_id) == (mid["me"], top_id)
    top_run = engine.runs.retrieve(top_id)
    assert (top_run.parent_id, top_run.root_id) == (None, None)


def test_gather_over_several_trigger_and_wait_inside_a_run(engine: Engine) -> None:
    @engine.task(id="child")
    async def child(payload: int, ctx: Any) -> int:
        await asyncio.sleep(0.001)
        return payload * 3

    @engine.task(id="fan-out", queue={"concurrency_limit": 1})
    async def fan_out(payload: int, ctx: Any) -> list[int]:
        results = await asyncio.gather(*(child.trigger_and_wait(i) for i in range(payload)))
        return [r.unwrap() for r in results]

    handle = fan_out.trigger(6)
    assert handle.wait(timeout=10).output == [0, 3, 6, 9, 12, 15]
    children = engine.runs.list(task_id="child")
    assert len(children) == 6 and {r.parent_id for r in children} == {handle.id}


def test_trigger_inside_a_sync_body_records_the_parent(engine: Engine) -> None:
    @engine.task(id="sync-child")
    def sync_child(payload: int, ctx: Any) -> int:
        return payload + 100

    @engine.task(id="sync-parent")
    def sync_parent(payload: int, ctx: Any) -> dict[str, Any]:
        handle = sync_child.trigger(payload)
        return {"id": handle.id, "out": handle.wait(timeout=10).output}

    parent = sync_parent.trigger(1)
    out = parent.wait(timeout=10).unwrap()
    assert out["out"] == 101
    assert engine.runs.retrieve(out["id"]).parent_id == parent.id
