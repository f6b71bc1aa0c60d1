"""One poisoned run in a burst of 100 costs no other run its record.

A task prints a file name holding a lone surrogate (`os.fsdecode(b"report-\\xff.csv")`), or
returns it, logs it as an attribute, or sets it as metadata. SQLite can't encode such a str.
Text produced inside a run (printed, logged, set as metadata) is escaped where it enters, so
it simply shows escaped; an output that can't be stored fails its own run. The other
99 are COMPLETED with their outputs in the file, and no waiter hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus

BAD = os.fsdecode(b"report-\xff.csv")
ESCAPED = "report-\\udcff.csv"


def _rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["print", "log_attribute", "log_message", "error", "output",
                                 "metadata"])
@pytest.mark.parametrize("body", ["async", "sync"])
def test_one_poisoned_run_in_a_burst(tmp_path: Path, how: str, body: str) -> None:
    db = tmp_path / "runs.db"

    def work(p: dict[str, Any]) -> dict[str, Any]:
        if p.get("poison"):
            if how == "print":
                print("wrote", BAD)
            elif how == "log_attribute":
                nbtasks.logger.info("wrote a file", path=BAD)
            elif how == "log_message":
                nbtasks.logger.info(f"wrote {BAD}")
            elif how == "error":
                raise ValueError(f"cannot read {BAD}")  # the message holds the raw name
            elif how == "output":
                return {"i": p["i"], "path": BAD}
            elif how == "metadata":
                nbtasks.metadata.set("path", BAD)
        return {"i": p["i"]}

    with Engine(store=str(db)) as eng:
        if body == "async":
            async def run_async(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
                await asyncio.sleep(0)
                return work(p)

            task = eng.task(id="work", run=run_async, retry=None)
        else:
            task = eng.task(id="work", run=lambda p, ctx: work(p), retry=None)
        batch = task.batch_trigger([{"i": i, "poison": i == 57} for i in range(100)])
        ids = [h.id for h in batch]
        results = eng.wait_results(ids, timeout=30)  # nobody hangs
        poisoned = results[57]
        assert sum(r.ok for r in results) >= 99
        assert not eng.scheduler.active

    # The file, read afresh: 99 good runs COMPLETED with their outputs, whatever happened to
    # the poisoned one, and nothing left EXECUTING for the next kernel to run again.
    rows = {r[0]: r[1:] for r in _rows(db, "SELECT id, status, output, error FROM runs")}
    assert len(rows) == 100
    for i, run_id in enumerate(ids):
        if i == 57:
            continue
        status, output, _ = rows[run_id]
        assert status == "COMPLETED" and json.loads(output) == {"i": i}
    status, output, error = rows[ids[57]]
    if how in ("print", "log_attribute", "log_message"):
        assert poisoned.ok and status == "COMPLETED"
        logs = _rows(db, "SELECT message, attributes FROM logs WHERE run_id = ?", (ids[57],))
        # Attributes are JSON: read them back as the API does, where the escape shows plainly.
        assert any(ESCAPED in m or ESCAPED in json.loads(a or "{}").get("path", "")
                   for m, a in logs), logs
    elif how == "metadata":  # metadata set inside a run is escaped like its log lines
        assert poisoned.ok and status == "COMPLETED"
        (meta,) = _rows(db, "SELECT metadata FROM runs WHERE id = ?", (ids[57],))[0]
        assert ESCAPED in json.dumps(json.loads(meta), ensure_ascii=False).replace("\\\\", "\\")
    elif how == "error":
        assert not poisoned.ok and status == "FAILED"
        assert ESCAPED in json.loads(error)["message"]
    else:
        assert not poisoned.ok and status == "FAILED"
        message = json.loads(error)["message"]
        assert "surrogate" in message, message  # says what was wrong
        assert output is None
        assert _rows(db, "SELECT status FROM attempts WHERE run_id = ?", (ids[57],)) == \
            [("FAILED",)]
    assert _rows(db, "SELECT COUNT(*) FROM runs WHERE status NOT IN ('COMPLETED', 'FAILED')") \
        == [(0,)]
    with Engine(store=str(db)) as again:  # a restart finds nothing to run again
        assert not again.scheduler.active
        assert again.runs.retrieve(ids[57]).status in (RunStatus.COMPLETED, RunStatus.FAILED)
