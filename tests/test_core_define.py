"""Defining tasks: both forms, sync and async bodies, redefinition, definition-time errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

import nbtasks
from nbtasks import (
    ConfigurationError,
    Engine,
    NbtasksError,
    PayloadValidationError,
    RunStatus,
    Task,
)
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]


def test_decorator_form_async_body(engine: Engine) -> None:
    @engine.task(id="hello-world")
    async def hello_world(payload: dict[str, str], ctx: Any) -> dict[str, str]:
        return {"echo": payload["message"]}

    assert isinstance(hello_world, Task)
    assert hello_world.id == "hello-world"
    assert hello_world.trigger({"message": "hi"}).wait(timeout=10).output == {"echo": "hi"}


def test_decorator_form_sync_body_runs_off_the_engine_loop(engine: Engine) -> None:
    seen: list[int] = []

    @engine.task(id="sync-body")
    def sync_body(payload: int, ctx: Any) -> int:
        seen.append(threading.get_ident())
        return payload * 2

    assert sync_body.trigger(21).wait(timeout=10).output == 42
    assert seen and seen[0] != engine.runtime.thread_id  # a worker thread, not the loop


def test_run_keyword_form_with_a_plain_function(engine: Engine) -> None:
    def some_function(payload: list[int], ctx: Any) -> int:
        return sum(payload)

    summing = engine.task(id="sum", run=some_function, retry={"max_attempts": 1})
    assert isinstance(summing, Task)
    assert summing.trigger([1, 2, 3]).wait(timeout=10).output == 6


def test_module_level_task_uses_the_default_engine() -> None:
    @nbtasks.task(id="core-define-module-level")
    async def module_level(payload: int, ctx: Any) -> int:
        return payload + 1

    handle = module_level.trigger(1)
    assert handle.wait(timeout=10).output == 2
    assert nbtasks.runs.retrieve(handle.id).task_id == "core-define-module-level"


def test_redefinition_replaces_without_error_and_running_attempt_keeps_old_code(
    engine: Engine, wait_status: WaitStatus,
) -> None:
    release = threading.Event()

    @engine.task(id="versioned")
    def v1(payload: Any, ctx: Any) -> str:
        release.wait(10)
        return "v1"

    old = v1.trigger(None)
    wait_status(engine, old.id, RunStatus.EXECUTING)

    @engine.task(id="versioned")
    def v2(payload: Any, ctx: Any) -> str:
        return "v2"

    assert engine.registry.require("versioned") is v2.definition
    assert v2.trigger(None).wait(timeout=10).output == "v2"
    # The handle of the first definition triggers the current code too (same id).
    assert v1.trigger(None).wait(timeout=10).output == "v2"
    release.set()
    assert old.wait(timeout=10).output == "v1"


def test_redefinition_between_attempts_retries_on_the_new_code(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    retry = {"max_attempts": 2, "min_timeout_in_ms": 1000, "randomize": False}

    @clocked.task(id="fixed-later", retry=retry)
    def broken(payload: Any, ctx: Any) -> str:
        raise RuntimeError("bug in v1")

    handle = broken.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)

    @clocked.task(id="fixed-later", retry=retry)
    def fixed(payload: Any, ctx: Any) -> str:
        return f"fixed on attempt {ctx.attempt.number}"

    clock.advance(1)
    assert handle.wait(timeout=10).output == "fixed on attempt 2"


@pytest.mark.parametrize(
    "options",
    [
        {"retries": {"max_attempts": 3}},
        {"concurrency_limit": 1},
        {"onSuccess": print},
    ],
)
def test_unknown_definition_options_raise(engine: Engine, options: dict[str, Any]) -> None:
    def body(payload: Any, ctx: Any) -> None:
        return None

    with pytest.raises(ConfigurationError, match="unknown option"):
        engine.task(id="bad-options", run=body, **options)
    with pytest.raises(ConfigurationError, match="unknown option"):
        engine.task(id="bad-options", **options)  # the decorator form fails at the decorator line
    assert engine.registry.get("bad-options") is None


@pytest.mark.parametrize(
    ("retry", "fragment"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 251}, "max_attempts"),
        ({"maxAttempts": 3}, "maxAttempts"),
        ({"factor": 0}, "factor"),
        ({"min_timeout_in_ms": -1}, "min_timeout_in_ms"),
        ({"randomize": "sometimes"}, "randomize"),
        ({"out_of_memory": {"machine": "huge"}}, "huge"),
        ("3 times", "expected a dict"),
        (3, "expected a dict"),
    ],
)
def test_bad_retry_dict_raises_at_definition(engine: Engine, retry: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as info:
        engine.task(id="bad-retry", run=lambda p, c: None, retry=retry)
    assert isinstance(info.value, ValueError)
    assert engine.registry.get("bad-retry") is None


@pytest.mark.parametrize("machine", ["huge", "small-3x", "", 4])
def test_unknown_machine_raises_naming_the_presets(engine: Engine, machine: Any) -> None:
    with pytest.raises(ConfigurationError, match="small-1x") as info:
        engine.task(id="bad-machine", run=lambda p, c: None, machine=machine)
    assert isinstance(info.value, NbtasksError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"queue": {"concurrency_limit": 1001}},
        {"queue": {"concurrency_limit": -1}},
        {"queue": {"limit": 1}},
        {"queue": 5},
        {"max_duration": 0},
        {"max_duration": "long"},
        {"on_success": "not callable"},
        {"run": "not callable"},
    ],
)
def test_other_bad_definitions_raise(engine: Engine, kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("run", lambda p, c: None)
    with pytest.raises(ConfigurationError):
        engine.task(id="bad-definition", **kwargs)
    assert engine.registry.get("bad-definition") is None


def test_empty_task_id_is_rejected(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="task id"):
        engine.task(id="", run=lambda p, c: None)


class Order(BaseModel):
    sku: str
    quantity: int


def test_schema_task_validates_in_the_caller_and_run_gets_the_model(engine: Engine) -> None:
    received: list[Any] = []

    @engine.schema_task(id="order", schema=Order)
    async def order(payload: Order, ctx: Any) -> int:
        received.append(payload)
        return payload.quantity * 10

    assert order.trigger({"sku": "A-1", "quantity": "3"}).wait(timeout=10).output == 30
    assert isinstance(received[0], Order) and received[0] == Order(sku="A-1", quantity=3)
    assert order.trigger(Order(sku="B", quantity=1)).wait(timeout=10).output == 10

    with pytest.raises(PayloadValidationError, match="quantity") as info:
        order.trigger({"sku": "A-1", "quantity": "many"})
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, ValueError)
    assert engine.runs.count(task_id="order") == 2


def test_schema_task_run_keyword_form(engine: Engine) -> None:
    def body(payload: Order, ctx: Any) -> str:
        return type(payload).__name__

    typed = engine.schema_task(id="order-run-form", schema=Order, run=body)
    assert typed.trigger({"sku": "x", "quantity": 1}).wait(timeout=10).output == "Order"


def test_schema_must_be_a_pydantic_model(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="pydantic"):
        engine.schema_task(id="bad-schema", schema=dict, run=lambda p, c: None)  # type: ignore[type-var]
