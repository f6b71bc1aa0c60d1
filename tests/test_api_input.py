"""Bad input raises in the caller and records nothing; the error tree's builtin bases."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _helpers import rows
from pydantic import BaseModel

import nbtasks
from nbtasks import (
    AbortTaskRunError,
    ConfigurationError,
    Engine,
    NbtasksError,
    PayloadSerializationError,
    PayloadValidationError,
    UnknownTaskError,
)


@pytest.fixture
def echo(engine: Engine) -> Any:
    @engine.task(id="echo")
    async def echo(payload: Any, ctx: Any) -> Any:
        return payload

    return echo


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"rows": [1, 2, 3, object()]}, 'payload["rows"][3] is a object'),
        ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, 'payload["when"] is a datetime'),
        ([{"a": {1, 2}}], 'payload[0]["a"] is a set'),
        ({("tuple", "key"): 1}, "payload key ('tuple', 'key')"),
        (b"bytes", "payload is a bytes"),
    ],
)
def test_non_json_payload_names_the_path_and_records_nothing(
    engine: Engine, echo: Any, db_path: Path, payload: Any, path: str,
) -> None:
    before = rows(engine, db_path)
    with pytest.raises(PayloadSerializationError) as info:
        echo.trigger(payload)
    assert path in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, NbtasksError)
    with pytest.raises(PayloadSerializationError):
        asyncio.run(echo.trigger_and_wait(payload))
    assert rows(engine, db_path) == before


def test_datetime_hint(echo: Any) -> None:
    with pytest.raises(PayloadSerializationError, match=r"use \.isoformat\(\)"):
        echo.trigger({"at": datetime(2026, 1, 1)})


def test_batch_item_path(echo: Any, engine: Engine, db_path: Path) -> None:
    with pytest.raises(PayloadSerializationError, match=r'items\[2\]\["x"\] is a object'):
        echo.batch_trigger([1, 2, {"x": object()}])
    assert rows(engine, db_path)["runs"] == 0
    echo.trigger(1).wait(timeout=10)
    assert rows(engine, db_path)["runs"] == 1  # the counter does see a stored run


BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"delay_ms": 5}, "unknown option"),
    ({"idempotencyKey": "k"}, "unknown option"),
    ({"delay": "soon"}, "not a duration"),
    ({"delay": "30m1h"}, "not a duration"),
    ({"delay": datetime(2030, 1, 1)}, "timezone"),
    ({"delay": -5}, "negative"),
    ({"ttl": "1 hour"}, "not a duration"),
    ({"ttl": -1}, "negative"),
    ({"tags": [f"t{i}" for i in range(11)]}, "only have 10 tags"),
    ({"tags": ["x" * 129]}, "128"),
    ({"tags": [3]}, "valid string"),
    ({"machine": "huge"}, "not a machine preset"),
    ({"max_attempts": -1}, "max_attempts"),
    ({"max_attempts": 251}, "max_attempts"),
    ({"max_duration": 0}, "max_duration"),
    ({"priority": -1}, "priority"),
    ({"concurrency_key": ""}, "concurrency_key"),
    ({"idempotency_key_ttl": "1h"}, "needs an idempotency_key"),
    ({"idempotency_key": "k", "idempotency_key_ttl": "forever"}, "not a duration"),
    ({"queue": {"name": "q", "concurrency_limit": 5000}}, "concurrency_limit"),
    ({"queue": {"name": "!!!"}}, "usable characters"),
    ({"metadata": {"x": object()}}, "JSON"),
    ({"metadata": "not a dict"}, "metadata"),
]


@pytest.mark.parametrize(("options", "fragment"), BAD_OPTIONS,
                         ids=[next(iter(o)) + "-" + str(i) for i, (o, _) in enumerate(BAD_OPTIONS)])
def test_bad_trigger_options_raise_in_the_caller_and_record_nothing(
    engine: Engine, echo: Any, db_path: Path, options: dict[str, Any], fragment: str,
) -> None:
    before = rows(engine, db_path)
    with pytest.raises(NbtasksError, match=fragment) as info:
        echo.trigger(1, **options)
    assert isinstance(info.value, ValueError | TypeError)
    with pytest.raises(NbtasksError, match=fragment):
        echo.batch_trigger([1, 2], **options)
    with pytest.raises(NbtasksError, match=fragment):
        asyncio.run(echo.trigger_and_wait(1, **options))
    assert rows(engine, db_path) == before
    assert engine.on_loop(lambda: len(engine.scheduler.active)) == 0


def test_bad_batch_item_option_rejects_the_whole_batch(engine: Engine, echo: Any,
                                                        db_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a machine preset"):
        echo.batch_trigger([1, nbtasks.BatchItem(2, machine="huge"), 3])
    assert rows(engine, db_path)["runs"] == 0


class Point(BaseModel):
    x: int
    y: int


def test_schema_failure_records_nothing(engine: Engine, db_path: Path) -> None:
    @engine.schema_task(id="point", schema=Point)
    async def point(payload: Point, ctx: Any) -> int:
        return payload.x + payload.y

    with pytest.raises(PayloadValidationError, match="y: Field required"):
        point.trigger({"x": 1})
    with pytest.raises(PayloadValidationError, match=r"items\[1\]"):
        point.batch_trigger([{"x": 1, "y": 2}, {"x": "one", "y": 2}])
    assert rows(engine, db_path)["runs"] == 0


def test_unknown_task_id_records_nothing(engine: Engine) -> None:
    with pytest.raises(UnknownTaskError, match="never-defined") as info:
        nbtasks.tasks.trigger("never-defined", {})
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownTaskError):
        asyncio.run(nbtasks.tasks.trigger_and_wait("never-defined", {}))
    assert nbtasks.runs.count() == 0


def test_error_tree_bases_and_docstrings() -> None:
    bases = {
        "ConfigurationError": ValueError, "PayloadValidationError": ValueError,
        "PayloadSerializationError": TypeError, "UnknownTaskError": LookupError,
        "RunNotFoundError": LookupError, "EngineError": RuntimeError,
        "RunWaitTimeoutError": TimeoutError, "MaxDurationExceededError": TimeoutError,
        "WaitTimeoutError": TimeoutError, "OutputSerializationError": TypeError,
        "SubtaskUnwrapError": nbtasks.TaskRunError, "OutOfMemoryError": nbtasks.TaskRunError,
        "WorkerCrashedError": nbtasks.TaskRunError, "KernelRestartError": nbtasks.TaskRunError,
    }
    for name, base in bases.items():
        cls = getattr(nbtasks, name)
        assert issubclass(cls, NbtasksError) and issubclass(cls, base), name
    errors = [v for v in vars(nbtasks).values()
              if inspect.isclass(v) and issubclass(v, BaseException)]
    assert {e.__name__ for e in errors} >= set(bases) | {"AbortTaskRunError", "NbtasksError"}
    assert all(e.__doc__ and e.__doc__.strip() for e in errors)
    # A control-flow signal outside the root, so `except NbtasksError` never swallows it.
    assert not issubclass(AbortTaskRunError, NbtasksError)
