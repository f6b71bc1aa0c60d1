"""Text printed inside a run reaches its log whole: a last line without a newline included.

`print(..., end="")` as a run's last output used to stay in the stream's buffer for ever (a
leak per run) and never reach the log.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine
from nbtasks._capture import _RunAwareStream


@pytest.mark.timeout(30)
@pytest.mark.parametrize("body", ["async", "sync"])
def test_a_final_print_without_newline_reaches_the_log(tmp_path: Path, body: str) -> None:
    db = tmp_path / "runs.db"

    def talk() -> None:
        print("first line")
        print("progress: ", end="")
        print("done", end="")
        print("on stderr", end="", file=sys.stderr)

    with Engine(store=str(db)) as eng:
        if body == "async":
            async def run_async(p: Any, ctx: Any) -> None:
                talk()

            task = eng.task(id="talk", run=run_async)
        else:
            task = eng.task(id="talk", run=lambda p, ctx: talk())
        handles = [task.trigger(i) for i in range(20)]
        assert all(r.ok for r in eng.wait_results([h.id for h in handles], timeout=10))
        for stream in (sys.stdout, sys.stderr):
            assert isinstance(stream, _RunAwareStream)
            assert stream._nbtasks_partial == {}  # nothing left behind per run
    con = sqlite3.connect(db)
    try:
        for h in handles:
            lines = con.execute("SELECT level, message FROM logs WHERE run_id = ? ORDER BY ts, "
                                "rowid", (h.id,)).fetchall()
            assert sorted(lines) == sorted([("info", "first line"), ("info", "progress: done"),
                                            ("error", "on stderr")])
    finally:
        con.close()
