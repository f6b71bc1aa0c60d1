"""`tags.add` past 10 tags logs an error on the run and returns, in one call or several.

Trigger.dev's SDK does the same (the server answers 422; the SDK logs and does not throw): a
tag must never fail the run that adds it. The check used to raise when one call alone brought
11 or more new tags, although the comment said it logs and returns.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import ConfigurationError, Engine


def run_body(eng: Engine, body: Any, **options: Any) -> tuple[Any, Any]:
    @eng.task(id="tagger", retry=None)
    async def tagger(payload: Any, ctx: Any) -> Any:
        return body()

    handle = tagger.trigger(None, **options)
    return handle.wait(timeout=10), eng.runs.retrieve(handle.id)


def logged(db_path: Path, run_id: str) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        return conn.execute("SELECT level, message FROM logs WHERE run_id = ? ORDER BY ts",
                            (run_id,)).fetchall()


@pytest.mark.parametrize("count", [11, 25])
def test_many_new_tags_in_one_call_log_an_error_and_return(engine: Engine, db_path: Path,
                                                           count: int) -> None:
    def body() -> str:
        nbtasks.tags.add([f"tag-{i}" for i in range(count)])
        nbtasks.tags.add("one-more")  # the run goes on, and can still add within the limit
        return "finished"

    result, run = run_body(engine, body)
    assert result.ok and result.output == "finished"
    assert run.tags == ["one-more"]  # none of the oversized call's tags, as in Trigger.dev
    assert ("error", f"tags.add: runs can only have 10 tags, you're trying to set {count}") in (
        logged(db_path, run.id))


def test_several_calls_stop_at_ten(engine: Engine, db_path: Path) -> None:
    def body() -> None:
        for i in range(12):
            nbtasks.tags.add(f"t{i}")

    result, run = run_body(engine, body)
    assert result.ok
    assert run.tags == [f"t{i}" for i in range(10)]
    errors = [m for level, m in logged(db_path, run.id) if level == "error"]
    assert errors == ["tags.add: runs can only have 10 tags, you're trying to set 11"] * 2


def test_a_bad_tag_still_raises_in_the_run(engine: Engine) -> None:
    """Not a count problem but a programming error: a non-str tag or one over 128 chars."""
    result, _ = run_body(engine, lambda: nbtasks.tags.add([1]))  # type: ignore[list-item]
    assert isinstance(result.error, nbtasks.TaskRunError)
    assert result.error.type_name == ConfigurationError.__name__
    assert "tags.add: tag 1 is not a string" in str(result.error)
