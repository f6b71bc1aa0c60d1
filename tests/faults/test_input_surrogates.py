"""Strings SQLite can't store (lone surrogates, as `os.fsdecode` makes from undecodable bytes).

Trigger inputs holding one are refused in the caller, naming the path, before anything is
recorded or runs. Text a run produces itself (log lines, metadata, tags.add) is kept with the
character escaped visibly, so the run that wrote it, and every run committed with it, survives.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from _helpers import rows

import nbtasks
from nbtasks import ConfigurationError, Engine, PayloadSerializationError, RunStatus

BAD = os.fsdecode(b"report-\xff.csv")  # 'report-\udcff.csv'
SHOWN = "report-\\udcff.csv"  # how it appears in a message (repr) and in stored, escaped text


PAYLOADS = [
    (BAD, "payload is"),
    ({"files": [{"name": BAD}]}, 'payload["files"][0]["name"] is'),
    ({BAD: 1}, "payload key"),
    ([1, 2, {"deep": (3, BAD)}], 'payload[2]["deep"][1] is'),
]


@pytest.mark.parametrize(("payload", "path"), PAYLOADS)
def test_payload_with_a_lone_surrogate_is_refused_in_the_caller(
    engine: Engine, echo: Any, calls: list[Any], db_path: Path, payload: Any, path: str,
) -> None:
    before = rows(engine, db_path)
    for call in (lambda: echo.trigger(payload),
                 lambda: echo.batch_trigger([1, payload]),
                 lambda: asyncio.run(echo.trigger_and_wait(payload))):
        with pytest.raises(PayloadSerializationError) as info:
            call()
        message = str(info.value)
        assert path.replace("payload", "items[1]") in message or path in message
        assert SHOWN in message  # the value, escaped so it can be printed
        assert "lone surrogate" in message
    assert rows(engine, db_path) == before
    # Nothing ran: the next good run is the only one the body ever saw.
    assert echo.trigger("fine").wait(timeout=10).output == "fine"
    assert calls == ["fine"]


OPTIONS = [
    ({"concurrency_key": BAD}, "concurrency_key"),
    ({"idempotency_key": BAD}, "idempotency_key"),
    ({"idempotency_key": ["a", BAD]}, "idempotency_key"),
    ({"idempotency_key": BAD + "x" * (64 - len(BAD))}, "idempotency_key"),  # "already hashed"
    ({"tags": ["ok", BAD]}, "tags"),
    ({"queue": BAD}, "queue"),
    ({"queue": {"name": BAD}}, "queue"),
    ({"metadata": {"file": BAD}}, 'metadata["file"]'),
    ({"metadata": {BAD: 1}}, "metadata key"),
]


@pytest.mark.parametrize(("options", "where"), OPTIONS,
                         ids=[f"{next(iter(o))}-{i}" for i, (o, _) in enumerate(OPTIONS)])
def test_options_with_a_lone_surrogate_are_refused_in_the_caller(
    engine: Engine, echo: Any, calls: list[Any], db_path: Path, options: dict[str, Any],
    where: str,
) -> None:
    before = rows(engine, db_path)
    for call in (lambda: echo.trigger(1, **options),
                 lambda: echo.batch_trigger([1, nbtasks.BatchItem(2, **options)]),
                 lambda: asyncio.run(echo.trigger_and_wait(1, **options))):
        with pytest.raises(ConfigurationError) as info:
            call()
        assert where in str(info.value)
        assert "surrogate" in str(info.value)
        assert "udcff" in str(info.value)  # the value is named, escaped
    assert rows(engine, db_path) == before
    assert echo.trigger(2).wait(timeout=10).ok
    assert calls == [2]


def test_task_id_with_a_lone_surrogate_is_refused_at_definition(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match=r"task id: 'report-\\udcff.csv'.*surrogate"):
        engine.task(id=BAD, run=lambda p, c: p)
    assert BAD not in engine.registry.ids()


def test_wait_token_inputs_with_a_lone_surrogate_are_refused(engine: Engine,
                                                             db_path: Path) -> None:
    before = rows(engine, db_path)
    with pytest.raises(ConfigurationError, match=r"token tags: tag: 'report-\\udcff.csv'"):
        engine.wait.create_token(tags=[BAD])
    with pytest.raises(ConfigurationError, match=r"idempotency_key: 'report-\\udcff.csv'"):
        engine.wait.create_token(idempotency_key=BAD)
    assert rows(engine, db_path) == before
    token = engine.wait.create_token(timeout="1h")
    with pytest.raises(PayloadSerializationError, match=r'data\["file"\] is .report-\\udcff'):
        engine.wait.complete_token(token, {"file": BAD})
    # The token is still pending and can be completed with good data.
    assert [t["id"] for t in engine.wait.list_tokens()] == [token.id]
    assert engine.wait.complete_token(token, {"file": "ok.csv"}) is True


def test_text_made_inside_a_run_is_escaped_visibly_and_stored(engine: Engine,
                                                             db_path: Path) -> None:
    @engine.task(id="writes-odd-text", retry=None)
    async def body(payload: Any, ctx: Any) -> str:
        nbtasks.logger.info(f"reading {BAD}", file=BAD, nested={BAD: [BAD]}, path=Path(BAD))
        nbtasks.metadata.set("file", BAD).set(BAD, 1)
        nbtasks.tags.add(BAD)
        return "done"

    handle = body.trigger(None)
    result = handle.wait(timeout=10)
    assert result.ok, result.error
    run = engine.runs.retrieve(handle.id)
    assert run.metadata == {"file": SHOWN, SHOWN: 1}
    assert run.tags == [SHOWN]
    with closing(sqlite3.connect(db_path)) as conn, conn:
        message, attributes = conn.execute(
            "SELECT message, attributes FROM logs WHERE run_id = ? AND message LIKE 'reading%'",
            (handle.id,)).fetchone()
    assert message == f"reading {SHOWN}"
    assert json.loads(attributes) == {"file": SHOWN, "nested": {SHOWN: [SHOWN]}, "path": SHOWN}


def test_a_run_writing_odd_text_does_not_cost_other_runs_their_records(
        engine: Engine, db_path: Path) -> None:
    """The burst from the issue, for the part this layer owns: logs, metadata and tags."""

    @engine.task(id="burst", retry=None)
    async def burst(n: int, ctx: Any) -> int:
        if n == 7:
            nbtasks.logger.warn(BAD, name=BAD)
            nbtasks.metadata.set("name", BAD)
            nbtasks.tags.add(BAD)
        return n

    handles = burst.batch_trigger(list(range(50)))
    results = handles.wait(timeout=30)
    assert [r.output for r in results] == list(range(50))
    engine.close()
    with Engine(store=str(db_path)) as again:
        assert again.runs.count(status="COMPLETED") == 50
        run = again.runs.retrieve(handles.runs[7].id)
        assert run.status is RunStatus.COMPLETED and run.metadata == {"name": SHOWN}


def test_metadata_that_is_not_json_still_raises_inside_the_run(engine: Engine) -> None:
    @engine.task(id="bad-md", retry=None)
    async def body(payload: Any, ctx: Any) -> list[str]:
        out = []
        for value in (float("nan"), {"x": object()}, {BAD: float("inf")}):
            try:
                nbtasks.metadata.set("v", value)
            except ConfigurationError as exc:
                out.append(str(exc))
        return out

    result = body.trigger(None).wait(timeout=10)
    assert result.ok
    nan, obj, inf = result.output
    assert 'metadata["v"] is nan' in nan
    assert 'metadata["v"]["x"] is a object' in obj
    assert 'metadata["v"]["report-\\\\udcff.csv"] is inf' in inf  # escaped first, then refused


def test_output_with_a_lone_surrogate_fails_the_attempt_with_a_clear_error(
        engine: Engine) -> None:
    @engine.task(id="bad-output", retry=None)
    async def body(payload: Any, ctx: Any) -> Any:
        return {"files": [BAD]}

    result = body.trigger(None).wait(timeout=10)
    assert not result.ok
    assert type(result.error).__name__ == "OutputSerializationError"
    assert 'output["files"][0]' in str(result.error) and "lone surrogate" in str(result.error)


def test_reads_and_lookups_by_such_a_string_are_configuration_errors(engine: Engine,
                                                                     echo: Any) -> None:
    """SQLite can't even bind such a str: a lookup by one used to raise UnicodeEncodeError."""
    echo.trigger(1).wait(timeout=10)
    for call, where in ((lambda: engine.runs.retrieve(BAD), "run id"),
                        (lambda: engine.runs.cancel(BAD), "run id"),
                        (lambda: engine.runs.list(task_id=["echo", BAD]), "task_id"),
                        (lambda: engine.runs.list(tag=BAD), "tag"),
                        (lambda: engine.runs.count(batch_id=BAD), "batch_id"),
                        (lambda: engine.wait.complete_token(BAD, {}), "token id"),
                        (lambda: asyncio.run(engine.wait.for_token(BAD)), "token id")):
        with pytest.raises(ConfigurationError) as info:
            call()
        assert str(info.value).startswith(f"{where}: 'report-\\udcff.csv'")
    with pytest.raises(ConfigurationError, match=r"wait\.list_tokens: status 5"):
        engine.wait.list_tokens(status=5)  # type: ignore[arg-type]
    assert engine.runs.count() == 1


def test_engine_records_escape_such_text_instead_of_failing_their_commit() -> None:
    """`dumps(value)` with no `what` encodes the engine's own records (a run's error): what a
    run produced is kept, escaped; anything named (`what=`) is checked strictly."""
    from nbtasks._payload import dumps

    error = {"type": "FileNotFoundError", "message": BAD, "traceback": f"open('{BAD}')"}
    assert json.loads(dumps(error)) == {"type": "FileNotFoundError", "message": SHOWN,
                                        "traceback": f"open('{SHOWN}')"}
    with pytest.raises(PayloadSerializationError, match=r'output\["message"\]'):
        dumps(error, what="output")
    with pytest.raises(PayloadSerializationError, match=r'record\["x"\] is nan'):
        dumps({"x": float("nan"), "y": BAD})


def _worker_body(payload: Any, ctx: Any) -> str:
    nbtasks.logger.info(f"reading {BAD}", file=BAD)
    nbtasks.metadata.set("file", BAD)
    nbtasks.tags.add(BAD)
    return "done"


@pytest.mark.timeout(240)  # the first worker of a session starts its fork server: slow under load
def test_text_made_in_a_worker_process_is_escaped_the_same_way(process_engine: Any,
                                                                db_path: Path) -> None:
    eng = process_engine(max_workers=1)
    task = eng.task(id="in-worker", machine="micro", retry=None, run=_worker_body)
    handle = task.trigger(None)
    assert handle.wait(timeout=180).ok  # a ceiling: it includes starting the worker
    run = eng.runs.retrieve(handle.id)
    assert run.metadata == {"file": SHOWN} and run.tags == [SHOWN]
    with closing(sqlite3.connect(db_path)) as conn, conn:
        logged = conn.execute("SELECT message, attributes FROM logs WHERE run_id = ? AND "
                              "message LIKE 'reading%'", (handle.id,)).fetchall()
    assert logged == [(f"reading {SHOWN}", json.dumps({"file": SHOWN}, separators=(",", ":")))]
