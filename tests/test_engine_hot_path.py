"""The per-attempt path stays lean: no pydantic model per run, no hook look-ups for tasks
without hooks, and the same outcomes as the full path."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from nbtasks import Engine, RunStatus
from nbtasks._models import RetryOptions


@pytest.mark.timeout(60)
def test_a_triggers_max_attempts_copies_the_policy_once_not_per_run(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[Any] = []
    real_copy = RetryOptions.model_copy

    def counted(self: RetryOptions, *args: Any, **kwargs: Any) -> RetryOptions:
        copies.append(kwargs.get("update"))
        return real_copy(self, *args, **kwargs)

    monkeypatch.setattr(RetryOptions, "model_copy", counted)

    @engine.task(id="flaky", retry={"max_attempts": 5, "min_timeout_in_ms": 0,
                                    "max_timeout_in_ms": 0, "randomize": False})
    async def flaky(payload: int, ctx: Any) -> None:
        raise ValueError(f"no {payload}")

    batch = flaky.batch_trigger(list(range(40)), max_attempts=2)
    results = batch.wait(timeout=30)
    assert [r.status for r in results] == [RunStatus.FAILED] * 40
    assert {engine.runs.retrieve(h.id).attempt_count for h in batch.runs} == {2}  # still applied
    assert copies == [{"max_attempts": 2}]


@pytest.mark.timeout(60)
def test_a_task_without_hooks_fails_and_retries_as_one_with_hooks(engine: Engine) -> None:
    """The path without hooks keeps the full path's outcomes: output, error, retry, and an
    output that can't be stored failing without a retry."""
    calls: list[int] = []

    @engine.task(id="plain", retry={"max_attempts": 2, "min_timeout_in_ms": 0,
                                    "max_timeout_in_ms": 0, "randomize": False})
    async def plain(payload: int, ctx: Any) -> Any:
        calls.append(ctx.attempt.number)
        if payload == 1 and ctx.attempt.number == 1:
            raise RuntimeError("first time")
        if payload == 2:
            return float("nan")
        return payload * 10

    ok, retried, unstorable = (plain.trigger(i) for i in range(3))
    assert ok.wait(timeout=10).output == 0
    assert retried.wait(timeout=10).output == 10
    bad = unstorable.wait(timeout=10)
    assert bad.status is RunStatus.FAILED and bad.error is not None
    assert "not JSON-serialisable" in str(bad.error)
    assert engine.runs.retrieve(unstorable.id).attempt_count == 1  # never retried
    assert sorted(calls) == [1, 1, 1, 2]


@pytest.mark.timeout(60)
def test_a_held_run_gives_the_garbage_collector_little_to_walk(engine: Engine) -> None:
    """A user holding 20,000 handles holds 20,000 run states: each one's containers are
    walked by every full collection, which pauses the engine loop too. A run without
    children or waiters owns no list for them, and a finished attempt leaves nothing behind."""

    @engine.task(id="held")
    async def held(payload: int, ctx: Any) -> int:
        return payload

    batch = held.batch_trigger(list(range(20)))
    states = [h._run for h in batch.runs]
    assert all(r.ok for r in batch.wait(timeout=30))
    for state in states:
        assert state is not None
        # Its metadata dict is always its own; Python 3.14 also tracks it while empty.
        owned = [o for o in gc.get_referents(state)
                 if gc.is_tracked(o) and not isinstance(o, type | RunStatus)
                 and o is not state.metadata]
        assert owned == [state.tags], owned


@pytest.mark.timeout(60)
def test_a_plain_task_runs_without_the_executor_and_its_body_is_a_task(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An async task with no hooks is driven by its own Task, with no executor or lifecycle
    coroutine between: a task with a hook still goes through them. The body still runs as an
    asyncio task of its own, so TaskGroup and asyncio.timeout work in it, and its logs land
    on its run. That task drives a real coroutine: Python 3.12's asyncio refuses a bare
    generator as a Task's coroutine, so a generator here would fail every plain run there."""
    import asyncio
    import inspect

    import nbtasks
    from nbtasks.executors.inline import InlineExecutor

    executed: list[str] = []
    drives: list[bool] = []
    real = InlineExecutor.execute

    async def counted(self: InlineExecutor, plan: Any, scope: Any) -> Any:
        executed.append(plan.defn.id)
        return await real(self, plan, scope)

    monkeypatch.setattr(InlineExecutor, "execute", counted)

    @engine.task(id="bare")
    async def bare(payload: int, ctx: Any) -> int:
        task = asyncio.current_task()
        drives.append(task is not None and inspect.iscoroutine(task.get_coro()))
        async with asyncio.timeout(5), asyncio.TaskGroup() as group:
            child = group.create_task(asyncio.sleep(0, payload + 1))
        nbtasks.logger.info("done", value=child.result())
        return child.result()

    @engine.task(id="hooked", cleanup=lambda payload, ctx: None)
    async def hooked(payload: int, ctx: Any) -> int:
        return payload

    assert bare.trigger(1).wait(timeout=10).output == 2
    assert hooked.trigger(3).wait(timeout=10).output == 3
    assert executed == ["hooked"] and drives == [True]
    (run,) = engine.runs.list(task_id="bare")
    logs = engine.runs.logs(run.id)
    assert logs.message.tolist() == ["done"] and logs.attributes.tolist() == [{"value": 2}]


@pytest.mark.timeout(60)
def test_waiting_on_a_finished_batch_reads_nothing_from_the_store(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's handles hold their runs' states: once the runs are final and durable, the
    batch's wait answers from them, with no store query (500 ids per batch, on every wait)."""

    @engine.task(id="quick")
    async def quick(payload: int, ctx: Any) -> int:
        return payload + 1

    batch = quick.batch_trigger(list(range(50)))
    for handle in batch.runs:
        handle.wait(timeout=10)  # each one final and durable
    queries: list[str] = []
    real = engine.store.select

    def counted(sql: str, params: Any = ()) -> Any:
        queries.append(sql)
        return real(sql, params)

    monkeypatch.setattr(engine.store, "select", counted)
    assert [r.output for r in batch.wait(timeout=10)] == list(range(1, 51))
    assert queries == []


@pytest.mark.timeout(60)
def test_a_queued_run_costs_the_garbage_collector_few_objects(engine: Engine) -> None:
    """Every full collection walks every object a queued run keeps alive. A burst of 20,000
    queued runs with seven objects each (a closure, its bound method and argument tuple among
    them) made full collections long enough to stall the engine loop; now it is four: the
    run's state, its handle, its tags list and its heap entry."""
    from nbtasks._runstate import RunState

    @engine.task(id="held", queue={"concurrency_limit": 1})
    async def held(payload: int, ctx: Any) -> None:
        return None

    engine.queues.pause("task/held")
    gc.collect()
    before = len(gc.get_objects())
    batches = [held.batch_trigger(list(range(i, i + 500))) for i in range(0, 2000, 500)]
    assert batches[-1].runs[-1].status is RunStatus.QUEUED
    gc.collect()
    per_run = (len(gc.get_objects()) - before) / 2000
    queued = [o for o in gc.get_objects() if type(o) is RunState]
    assert len(queued) >= 2000
    # 4.15 on Python 3.11, 4.3 on 3.13 (which leaves a few more of the engine's small tuples
    # tracked): one object more per run would be 5. Python 3.14 tracks empty dicts too, so
    # each run's empty metadata dict counts there (5.05).
    assert per_run <= 4.5 + gc.is_tracked({}), per_run
    engine.queues.resume("task/held")
    for batch in batches:
        assert all(r.ok for r in batch.wait(timeout=30))
