"""A pool worker drives an attempt's coroutine on a task of its own (`_worker.PipeChannel.attempt`),
as the kernel's loop does: an async body that opens with `asyncio.timeout` or a TaskGroup needs
a current task, its context stays its own, cancels reach it, and what it starts gets a turn."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest

from nbtasks.executors._worker import PipeChannel

pytestmark = pytest.mark.timeout(30)

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


@pytest.fixture
def channel() -> Iterator[PipeChannel]:
    ours, theirs = multiprocessing.Pipe(duplex=True)
    loop = asyncio.new_event_loop()
    try:
        yield PipeChannel(ours, loop)
    finally:
        loop.close()
        ours.close()
        theirs.close()


async def _no_await() -> dict[str, Any]:
    SEEN.set("inside")
    return {"loop": asyncio.get_running_loop(), "task": asyncio.current_task()}


def test_an_attempt_that_never_awaits_runs_in_a_task_of_its_own(channel: PipeChannel) -> None:
    out = channel.attempt(_no_await())
    assert out["loop"] is channel.loop
    assert isinstance(out["task"], asyncio.Task)
    assert SEEN.get() == "unset"  # what it set stayed in its own context
    assert asyncio.events._get_running_loop() is None


async def _opens_with_a_timeout_and_a_group() -> int:
    async with asyncio.timeout(5):
        async with asyncio.TaskGroup() as group:
            child = group.create_task(asyncio.sleep(0, 3))
    return await asyncio.wait_for(asyncio.sleep(0, child.result() + 1), 5)


def test_an_attempt_may_open_with_a_timeout_a_task_group_and_wait_for(
        channel: PipeChannel) -> None:
    """Each needs a current task from the first step on: hand-stepped, the first raised
    "Timeout should be used inside a task" (and wait_for does too on Python 3.12+)."""
    assert channel.attempt(_opens_with_a_timeout_and_a_group()) == 4


async def _awaits(failing: asyncio.Future[None]) -> dict[str, Any]:
    SEEN.set("before")
    await asyncio.sleep(0)  # a bare yield
    await asyncio.sleep(0.01)  # a future the loop resolves
    try:
        await failing  # an exception thrown back in
    except KeyError as exc:
        caught = str(exc)
    return {"seen": SEEN.get(), "caught": caught, "task": asyncio.current_task() is not None}


def test_an_attempt_that_awaits_goes_on_in_a_task_in_the_same_context(
        channel: PipeChannel) -> None:
    failing: asyncio.Future[None] = channel.loop.create_future()
    channel.loop.call_later(0.02, failing.set_exception, KeyError("thrown"))
    out = channel.attempt(_awaits(failing))
    assert out == {"seen": "before", "caught": "'thrown'", "task": True}
    assert SEEN.get() == "unset"


async def _cancelled(started: list[str]) -> str:
    started.append("yes")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return "cleaned up"
    return "not cancelled"


def test_a_cancel_reaches_the_rest_of_the_attempt(channel: PipeChannel) -> None:
    started: list[str] = []
    coro = _cancelled(started)

    def cancel_it() -> None:
        for task in asyncio.all_tasks(channel.loop):
            task.cancel()

    channel.loop.call_later(0.02, cancel_it)
    assert channel.attempt(coro) == "cleaned up"
    assert started == ["yes"]


async def _starts_a_task(steps: list[str]) -> str:
    async def background() -> None:
        steps.append("background ran")

    asyncio.get_running_loop().create_task(background())
    return "done"


def test_a_task_started_by_an_attempt_that_never_awaits_gets_its_turn(
        channel: PipeChannel) -> None:
    steps: list[str] = []
    assert channel.attempt(_starts_a_task(steps)) == "done"
    assert steps == ["background ran"]
