"""Idempotency keys and the remaining per-trigger options."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus, Task
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]


def sha(*parts: str) -> str:
    return hashlib.sha256("-".join(parts).encode()).hexdigest()


@pytest.fixture
def counted(clocked: Engine) -> tuple[Task[Any, Any], list[Any]]:
    calls: list[Any] = []

    @clocked.task(id="counted", retry=None)
    async def counted(payload: Any, ctx: Any) -> Any:
        calls.append(payload)
        if payload == "fail":
            raise ValueError("failed once")
        return payload

    return counted, calls


def test_same_key_returns_the_same_run(clocked: Engine,
                                       counted: tuple[Task[Any, Any], list[Any]]) -> None:
    t, calls = counted
    clocked.queues.pause("task/counted")
    first = t.trigger("a", idempotency_key="order-1")
    again = t.trigger("b", idempotency_key="order-1")  # while still queued
    assert (again.id, again.is_cached, first.is_cached) == (first.id, True, False)
    clocked.queues.resume("task/counted")
    assert first.wait(timeout=10).output == "a"
    after = t.trigger("c", idempotency_key="order-1")  # after it completed
    assert after.id == first.id and after.is_cached
    assert calls == ["a"]
    assert clocked.runs.count(task_id="counted") == 1
    assert clocked.runs.retrieve(first.id).idempotency_key == sha("order-1")


@pytest.mark.parametrize("final", ["fail", "cancel"])
def test_a_failed_or_cancelled_run_is_returned_too(
    clocked: Engine, counted: tuple[Task[Any, Any], list[Any]], final: str,
) -> None:
    t, _ = counted
    if final == "cancel":
        clocked.queues.pause("task/counted")
    first = t.trigger(final, idempotency_key="k")
    if final == "cancel":
        first.cancel()
    status = first.wait(timeout=10).status
    assert status in (RunStatus.FAILED, RunStatus.CANCELED)
    again = t.trigger("ok", idempotency_key="k")
    assert again.id == first.id and again.is_cached and again.status is status


def test_keys_are_per_task(clocked: Engine, counted: tuple[Task[Any, Any], list[Any]]) -> None:
    t, _ = counted

    @clocked.task(id="other")
    async def other(payload: Any, ctx: Any) -> Any:
        return payload

    a = t.trigger(1, idempotency_key="shared")
    b = other.trigger(2, idempotency_key="shared")
    assert a.id != b.id and not b.is_cached


@pytest.mark.parametrize("where", ["active", "finished"])
def test_key_ttl_expiry_creates_a_new_run(
    clocked: Engine, clock: ManualClock, counted: tuple[Task[Any, Any], list[Any]], where: str,
) -> None:
    t, calls = counted
    if where == "active":
        clocked.queues.pause("task/counted")
    first = t.trigger("one", idempotency_key="k", idempotency_key_ttl="1m")
    if where == "finished":
        first.wait(timeout=10)
    clock.advance(59)
    assert t.trigger("two", idempotency_key="k", idempotency_key_ttl="1m").id == first.id
    clock.advance(1)
    fresh = t.trigger("three", idempotency_key="k", idempotency_key_ttl="1m")
    assert fresh.id != first.id and not fresh.is_cached
    clocked.queues.resume("task/counted")
    assert fresh.wait(timeout=10).output == "three"
    assert fresh.id == t.trigger("four", idempotency_key="k").id  # the new run owns the key now
    assert calls == ["one", "three"]


def test_default_key_ttl_is_thirty_days(clocked: Engine, clock: ManualClock,
                                        counted: tuple[Task[Any, Any], list[Any]]) -> None:
    t, _ = counted
    first = t.trigger(1, idempotency_key="monthly")
    first.wait(timeout=10)
    clock.advance(30 * 86400 - 1)
    assert t.trigger(2, idempotency_key="monthly").id == first.id
    clock.advance(1)
    assert t.trigger(3, idempotency_key="monthly").id != first.id


def test_key_forms(clocked: Engine, counted: tuple[Task[Any, Any], list[Any]]) -> None:
    t, _ = counted
    listed = t.trigger(1, idempotency_key=["user", "42"])
    assert clocked.runs.retrieve(listed.id).idempotency_key == sha("user", "42")
    hashed = sha("user", "42")
    assert t.trigger(2, idempotency_key=hashed).id == listed.id  # 64 hex chars: used as is


def test_idempotency_keys_create_scopes(engine: Engine) -> None:
    assert nbtasks.idempotency_keys.create("k") == sha("k")  # outside a run: global
    assert nbtasks.idempotency_keys.create(["a", "b"], scope="attempt") == sha("a", "b")
    assert nbtasks.idempotency_keys.create("k", scope="global") == sha("k")

    @engine.task(id="scoped")
    async def scoped(payload: Any, ctx: Any) -> dict[str, str]:
        create = nbtasks.idempotency_keys.create
        return {"run": create("k"), "attempt": create(["k", "x"], scope="attempt"),
                "global": create("k", scope="global"), "id": ctx.run.id}

    out = scoped.trigger(None).wait(timeout=10).unwrap()
    assert out["run"] == sha("k", out["id"])
    assert out["attempt"] == sha("k", "x", out["id"], "1")
    assert out["global"] == sha("k")
    with pytest.raises(nbtasks.ConfigurationError, match="scope"):
        nbtasks.idempotency_keys.create("k", scope="session")


def test_run_scoped_key_dedupes_a_child_across_retries(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    children: list[str] = []

    @clocked.task(id="charge")
    async def charge(payload: Any, ctx: Any) -> str:
        return ctx.run.id

    @clocked.task(id="checkout", retry={"max_attempts": 2, "min_timeout_in_ms": 1000,
                                        "randomize": False})
    async def checkout(payload: Any, ctx: Any) -> None:
        key = nbtasks.idempotency_keys.create("charge")  # scope="run": stable across attempts
        children.append(charge.trigger(None, idempotency_key=key).id)
        if ctx.attempt.number == 1:
            raise RuntimeError("crash after charging")

    handle = checkout.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    clock.advance(1)
    assert handle.wait(timeout=10).ok
    assert len(children) == 2 and children[0] == children[1]


def test_tags_metadata_concurrency_key_and_queue_are_stored(engine: Engine) -> None:
    @engine.task(id="optioned")
    async def optioned(payload: Any, ctx: Any) -> list[str]:
        return [ctx.queue.name, *ctx.run.tags]

    handle = optioned.trigger(None, tags=["a", "a", " ", "b"], metadata={"seed": [1]},
                              concurrency_key="tenant-9",
                              queue={"name": "stored-q", "concurrency_limit": 4})
    assert handle.wait(timeout=10).output == ["stored-q", "a", "b"]
    run = engine.runs.retrieve(handle.id)
    assert (run.tags, run.metadata, run.concurrency_key, run.queue) == (
        ["a", "b"], {"seed": [1]}, "tenant-9", "stored-q")
    assert engine.queues.retrieve("stored-q")["concurrency_limit"] == 4
    single = optioned.trigger(None, tags="solo")
    single.wait(timeout=10)
    assert engine.runs.retrieve(single.id).tags == ["solo"]


def test_options_on_trigger_and_wait_inside_a_run(engine: Engine) -> None:
    @engine.task(id="tagged-child")
    async def child(payload: Any, ctx: Any) -> list[str]:
        return list(ctx.run.tags)

    @engine.task(id="tagging-parent")
    async def parent(payload: Any, ctx: Any) -> list[str]:
        result = await child.trigger_and_wait(None, tags=["from-parent"], max_attempts=1)
        return result.unwrap()

    assert parent.trigger(None, tags=["parent-tag"]).wait(timeout=10).output == ["from-parent"]


def test_trigger_and_wait_outside_a_run_on_another_loop(engine: Engine) -> None:
    @engine.task(id="plain")
    async def plain(payload: int, ctx: Any) -> int:
        return payload

    async def main() -> list[int]:
        results = await asyncio.gather(*(plain.trigger_and_wait(i, tags=["g"]) for i in range(5)))
        return [r.unwrap() for r in results]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert len(engine.runs.list(tag="g")) == 5


def test_duplicate_keys_in_one_batch_and_wait_complete(engine: Engine) -> None:
    @engine.task(id="dedupe-child")
    async def child(payload: int, ctx: Any) -> int:
        return payload

    @engine.task(id="dedupe-parent")
    async def parent(payload: Any, ctx: Any) -> list[Any]:
        items = [nbtasks.BatchItem(i, idempotency_key=f"k{i % 2}") for i in range(4)]
        results = await child.batch_trigger_and_wait(items)
        return [[r.id, r.output] for r in results]

    out = parent.trigger(None).wait(timeout=10).unwrap()  # reference issue #2965 never finished
    assert [o[1] for o in out] == [0, 1, 0, 1]
    assert out[0][0] == out[2][0] and out[1][0] == out[3][0] and out[0][0] != out[1][0]
    assert engine.runs.count(task_id="dedupe-child") == 2
    batch = child.batch_trigger([nbtasks.BatchItem(9, idempotency_key="k0"), 5])
    assert [h.is_cached for h in batch] == [True, False]
