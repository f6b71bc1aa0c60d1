"""Errors that used to surface raw (RecursionError, pydantic's ValidationError, TypeError,
OverflowError) are ConfigurationError or PayloadSerializationError naming what was wrong."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import rows

from nbtasks import ConfigurationError, Engine, NbtasksError, PayloadSerializationError


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    inner = root
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return root


def test_circular_payload_names_the_path(engine: Engine, echo: Any, db_path: Path) -> None:
    loop: dict[str, Any] = {"a": {"b": []}}
    loop["a"]["b"].append(loop)
    before = rows(engine, db_path)
    with pytest.raises(PayloadSerializationError,
                       match=r'payload\["a"\]\["b"\]\[0\] refers back .*circular'):
        echo.trigger(loop)
    with pytest.raises(PayloadSerializationError, match=r'items\[0\]\["a"\]'):
        echo.batch_trigger([loop])
    assert rows(engine, db_path) == before


def test_payload_nested_10000_deep_names_the_depth(engine: Engine, echo: Any,
                                                   db_path: Path) -> None:
    before = rows(engine, db_path)
    with pytest.raises(PayloadSerializationError, match=r"nested 10000 levels deep") as info:
        echo.trigger({"x": nested(9999)})
    assert 'payload["x"][0][0]' in str(info.value)
    assert len(str(info.value)) < 300  # the path is cut short, not 30,000 characters
    assert rows(engine, db_path) == before
    # A modestly nested value is fine.
    assert echo.trigger(nested(50)).wait(timeout=10).ok


@pytest.fixture
def deep_encoding() -> Iterator[None]:
    """Let the interpreter's own JSON encoder go 3,000 levels deep (3.11's counts against the
    recursion limit; 3.12+'s already does), so only the store's own depth check can refuse."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def test_a_value_deeper_than_sqlites_json_reads_is_refused_by_name(
        engine: Engine, echo: Any, db_path: Path, deep_encoding: None) -> None:
    """Python 3.13's encoder writes 9,999 levels, SQLite's JSON functions read 1,000 (2,000
    before 3.45): one deeper row made the dashboard's schedule filter, a json_extract over
    every run's payload, fail with "malformed JSON" for the whole store."""
    from nbtasks._payload import MAX_DEPTH, readable_by_sqlite

    assert readable_by_sqlite("[" * 500 + "]" * 500)
    assert not readable_by_sqlite("[" * 2_500 + "]" * 2_500)
    assert readable_by_sqlite("[" + ",".join(["[]"] * 5_000) + "]")  # many brackets, shallow
    assert readable_by_sqlite('"' + "[" * 5_000 + '"')  # brackets in a string only
    before = rows(engine, db_path)
    with pytest.raises(PayloadSerializationError,
                       match=rf"payload is nested 2500 levels deep .*JSON queries read "
                             rf"\({MAX_DEPTH} levels\)"):
        echo.trigger(nested(2_500))
    with pytest.raises(ConfigurationError, match=r"metadata is nested 2501 levels deep"):
        echo.trigger(1, metadata={"deep": nested(2_500)})
    assert rows(engine, db_path) == before
    wide = [[i] for i in range(5_000)]  # 5,001 brackets, two levels: kept
    assert echo.trigger(wide).wait(timeout=10).output == wide


def test_log_attributes_too_deep_to_store_are_replaced_by_a_note(
        engine: Engine, deep_encoding: None) -> None:
    import nbtasks

    @engine.task(id="deep-log")
    async def deep_log(payload: int, ctx: Any) -> str:
        nbtasks.logger.info("deep", value=nested(payload))
        return "done"

    assert deep_log.trigger(2_500).wait(timeout=10).output == "done"
    (run,) = engine.runs.list(task_id="deep-log")
    logs = engine.runs.logs(run.id)
    assert logs.message.tolist() == ["deep"]
    assert "nested too deep to store" in logs.attributes.tolist()[0]["unstorable"]


def test_deep_output_fails_the_attempt_not_the_engine(engine: Engine) -> None:
    @engine.task(id="deep-out", retry=None)
    async def deep(payload: Any, ctx: Any) -> Any:
        return nested(10_000)

    result = deep.trigger(None).wait(timeout=10)
    assert not result.ok and "nested 10000 levels deep" in str(result.error)


@pytest.mark.parametrize(("queue", "shown"), [
    ("", "queue: must be a non-empty string"),
    ("!!!", "'!!!' has no usable characters"),
    (5, "queue"),
    ({"name": ""}, "queue: name: Value error, '' has no usable characters"),
    ({"name": "q", "concurrency_limit": True}, "got True"),
    ({"name": "q", "concurrency_limit": "3"}, "got '3'"),
])
def test_bad_queue_option_is_a_configuration_error(engine: Engine, echo: Any, db_path: Path,
                                                   queue: Any, shown: str) -> None:
    before = rows(engine, db_path)
    with pytest.raises(ConfigurationError) as info:
        echo.trigger(1, queue=queue)
    assert shown in str(info.value)
    with pytest.raises(ConfigurationError):
        asyncio.run(echo.trigger_and_wait(1, queue=queue))
    assert rows(engine, db_path) == before


BAD_LISTS: list[tuple[dict[str, Any], str]] = [
    # the parameter, and the message's start (its name, then the value)
    ({"task_id": 5}, "task_id: expected a string or a non-empty list of strings, got 5"),
    ({"task_id": [5]}, "task_id: expected a string or a non-empty list of strings, got [5]"),
    ({"task_id": []}, "task_id: expected a string or a non-empty list of strings, got []"),
    ({"tag": 5}, "tag: expected a string or a non-empty list of strings, got 5"),
    ({"tag": {"a": 1}}, "tag: expected a string or a non-empty list of strings, got {'a': 1}"),
    ({"status": 5}, "status: expected a status or a list of them, got 5"),
    ({"status": ["NOPE"]}, "status: 'NOPE' is not a run status"),
    ({"batch_id": 5}, "batch_id: expected a string or a non-empty list of strings, got 5"),
    ({"is_test": "yes"}, "is_test: expected True, False or None, got 'yes'"),
    ({"since": float("nan")}, "since: nan is not a number of seconds"),
    ({"since": "9999999w"}, "since: '9999999w' is more than 10 years"),
    ({"until": 10**30}, f"until: {10**30} is more than 10 years"),
    ({"limit": 10**20}, f"limit must be an int from 1 to 2**63-1, got {10**20}"),
    ({"limit": 0}, "limit must be an int from 1 to 2**63-1, got 0"),
    ({"limit": True}, "limit must be an int from 1 to 2**63-1, got True"),
    ({"limit": "10"}, "limit must be an int from 1 to 2**63-1, got '10'"),
    ({"offset": 10**20}, f"offset must be an int from 0 to 2**63-1, got {10**20}"),
    ({"offset": -1}, "offset must be an int from 0 to 2**63-1, got -1"),
    ({"offset": 1.5}, "offset must be an int from 0 to 2**63-1, got 1.5"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_LISTS, ids=[str(k) for k, _ in BAD_LISTS])
def test_bad_list_parameters_are_configuration_errors(engine: Engine, echo: Any,
                                                      kwargs: dict[str, Any], message: str) -> None:
    echo.trigger(1).wait(timeout=10)
    with pytest.raises(ConfigurationError) as info:
        engine.runs.list(**kwargs)
    assert str(info.value).startswith(message)
    if "limit" not in kwargs and "offset" not in kwargs:
        with pytest.raises(ConfigurationError) as info:
            engine.runs.count(**kwargs)
        assert str(info.value).startswith(message)


def test_other_runs_calls_refuse_wrong_types(engine: Engine, echo: Any) -> None:
    handle = echo.trigger(1)
    handle.wait(timeout=10)
    for call in (lambda: engine.runs.retrieve(5),  # type: ignore[arg-type]
                 lambda: engine.runs.cancel(["x"]),  # type: ignore[arg-type]
                 lambda: engine.runs.replay(None),  # type: ignore[arg-type]
                 lambda: engine.runs.reschedule(5, "1m"),  # type: ignore[arg-type]
                 lambda: engine.runs.count(taskid="echo"),
                 lambda: engine.runs.logs(5),  # type: ignore[arg-type]
                 lambda: engine.runs.to_dataframe(limit=10**20),
                 lambda: engine.runs.to_dataframe(task_id=5),
                 lambda: engine.runs.attempts_dataframe(taskid="echo"),
                 lambda: engine.runs.prune(older_than=float("nan"))):
        with pytest.raises(ConfigurationError):
            call()
    assert engine.runs.count() == 1


def test_errors_are_all_from_the_library(engine: Engine, echo: Any) -> None:
    """The raw kinds the issue saw: none escapes any more."""
    loop: list[Any] = []
    loop.append(loop)
    attempts = [lambda: echo.trigger(loop), lambda: echo.trigger(nested(10_000)),
                lambda: echo.trigger(1, queue=""), lambda: engine.runs.list(task_id=5),
                lambda: engine.runs.list(limit=10**20)]
    for call in attempts:
        with pytest.raises(NbtasksError):
            call()
