"""The durability contract, checked against the file itself with a separate connection.

- Once trigger() returns, the run is in the file (in `runs`, or in the intake file beside it
  until it is folded in): a kernel that dies right after (os._exit, SIGKILL, a segfault)
  loses none of the runs it reported, and the next one adopts them all.
- Once a waiter hears a run completed, its output is in the file, even on a slow disk.
- Writes are grouped: many runs per transaction.
- The folder is 0700 and the database with its -wal and -shm files 0600, whatever the umask.
- The file holds JSON only, and nothing read back from it is unpickled.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _helpers import ids_in_files, read_rows

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.stores._base import WriteBatch
from nbtasks.stores.sqlite import SQLiteStore

CHILD = Path(__file__).with_name("_child_engine.py")
PACKAGE = Path(nbtasks.__file__).parent


@pytest.mark.parametrize(("how", "code"), [("exit", 3), ("kill", -signal.SIGKILL),
                                           ("segv", -signal.SIGSEGV)])
def test_a_run_is_on_disk_once_trigger_returns(tmp_path: Path, how: str, code: int) -> None:
    db = tmp_path / "runs.db"
    proc = subprocess.run([sys.executable, str(CHILD), "crash", str(db), how],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    promised = [i for line in proc.stdout.splitlines() for i in json.loads(line)]
    assert len(promised) == 20 * 2 + 100 + 50  # trigger() pairs, a batch, trigger_async burst
    assert set(promised) <= ids_in_files(db)  # in `runs`, or in the intake beside it
    # The next kernel adopts them: the hanging ones failed with the kernel and are retried.
    with Engine(store=str(db)) as eng:
        hang = eng.runs.list(task_id="hang", limit=100)
        assert len(hang) == 20
        assert all(r.status is not RunStatus.EXECUTING for r in hang)


class SlowStore(SQLiteStore):
    """A disk that takes 30 ms per commit, so "told before written" would show."""

    def write(self, batch: WriteBatch) -> None:
        time.sleep(0.03)
        super().write(batch)


def test_waiters_hear_of_completion_only_after_the_output_is_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    seen: list[tuple[Any, ...]] = []
    with Engine(store=SlowStore(db)) as eng:
        @eng.task(id="child")
        def child(p: int, ctx: Any) -> dict[str, int]:
            return {"x": p}

        @eng.task(id="parent")
        async def parent(p: int, ctx: Any) -> str:
            result = await child.trigger_and_wait(p)
            seen.extend(read_rows(db, "SELECT status, output FROM runs WHERE id = ?", (result.id,)))
            return result.id

        for i in range(10):
            handle = child.trigger(i)
            result = handle.wait(timeout=10)
            assert result.output == {"x": i}
            assert read_rows(db, "SELECT status, output FROM runs WHERE id = ?", (handle.id,)) == \
                [("COMPLETED", json.dumps({"x": i}, separators=(",", ":")))]
        import asyncio

        async def awaited() -> None:
            handle = child.trigger(99)
            await handle
            assert read_rows(db, "SELECT output FROM runs WHERE id = ?", (handle.id,)) == \
                [('{"x":99}',)]

        asyncio.run(awaited())
        parent.trigger(7).wait(timeout=10)
        assert seen == [("COMPLETED", '{"x":7}')]


class CountingStore(SQLiteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes = 0
        self.engine_writes = 0  # made by the engine's writer thread (not a trigger's caller)

    def write(self, batch: WriteBatch) -> None:
        self.writes += 1
        self.engine_writes += threading.current_thread().name == "nbtasks-writer"
        super().write(batch)


def test_writes_are_grouped_into_few_transactions(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "runs.db")
    with Engine(store=store) as eng:
        noop = eng.task(id="noop", run=lambda p, ctx: p)
        before = store.writes
        handles = [h for i in range(4) for h in noop.batch_trigger(list(range(i * 500,
                                                                          i * 500 + 500)))]
        assert all(r.ok for r in eng.wait_results([h.id for h in handles], timeout=30))
        assert store.writes - before < 2000 / 10  # each run is written 3+ times
        # A trigger() from a cell commits its own row (one short transaction, on its own
        # thread, before it returns); what the engine writes after that is grouped.
        before, engine_before = store.writes, store.engine_writes
        threads = [threading.Thread(target=lambda: [noop.trigger(i) for i in range(20)])
                   for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        eng.runtime.call(eng.writer.barrier)
        assert store.writes - store.engine_writes - (before - engine_before) == 200
        assert store.engine_writes - engine_before < 100


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_files_are_owner_only(tmp_path: Path, umask: int) -> None:
    code = (f"import os, nbtasks; os.umask({umask}); "
            "eng = nbtasks.Engine(store='.nbtasks/runs.db'); "
            "eng.task(id='t', run=lambda p, c: p).trigger(1).wait(timeout=10); "
            "print(sorted(os.listdir('.nbtasks'))); eng.close()")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=True)
    assert "runs.db-wal" in out.stdout and "runs.db-shm" in out.stdout  # they existed
    folder = tmp_path / ".nbtasks"
    assert folder.stat().st_mode & 0o777 == 0o700
    with Engine(store=str(folder / "runs.db")) as eng:  # open again: -wal and -shm come back
        eng.task(id="t", run=lambda p, c: p).trigger(2).wait(timeout=10)
        for name in ("runs.db", "runs.db-wal", "runs.db-shm",  # and the intake's own three
                     "runs.db-intake", "runs.db-intake-wal", "runs.db-intake-shm"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600, name


def test_store_modules_never_unpickle() -> None:
    """Nothing that reads the store imports pickle (the process executor may, for code)."""
    readers = [*PACKAGE.glob("stores/*.py"), *(PACKAGE / n for n in (
        "_payload.py", "_runstate.py", "_runs.py", "frames.py", "_recovery.py", "_tokens.py",
        "_schedules.py", "_handles.py", "_errors.py", "_writer.py"))]
    for path in readers:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any("pickle" in n or n == "marshal" for n in names), (path, names)


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (os.environ["NBTASKS_TEST_MARKER"],))


def test_stored_values_are_json_and_a_planted_pickle_is_not_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runs.db"
    with Engine(store=str(db)) as eng:
        @eng.task(id="rich", retry=None)
        def rich(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
            nbtasks.logger.info("hello", n=1)
            nbtasks.metadata.set("progress", 0.5)
            if p.get("fail"):
                raise ValueError("no")
            return {"out": [1, 2, {"k": None}]}

        rich.trigger({"a": "ü"}, tags=["t1"]).wait(timeout=10)
        rich.trigger({"fail": True}).wait(timeout=10)
        run_id = rich.trigger({"b": 1}).id
        eng.wait_result(run_id, timeout=10)
    columns = {"runs": ["payload", "output", "error", "tags", "metadata"],
               "attempts": ["error"], "logs": ["attributes"],
               "waitpoints": ["output", "tags", "data"]}
    checked = 0
    for table, cols in columns.items():
        for col in cols:
            for (value,) in read_rows(db, f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL"):
                assert isinstance(value, str)
                json.loads(value)
                checked += 1
    assert checked >= 8
    marker = tmp_path / "pwned"
    monkeypatch.setenv("NBTASKS_TEST_MARKER", str(marker))
    con = sqlite3.connect(db)
    con.execute("UPDATE runs SET output = ? WHERE id = ?", (pickle.dumps(_Boom()), run_id))
    con.commit()
    con.close()
    with Engine(store=str(db)) as eng:
        run = eng.runs.retrieve(run_id)  # listed as undecodable; the bytes are never unpickled
        assert run.output is None and run.error is not None
        assert run.error["message"].startswith("undecodable row: output=")
        with pytest.raises((ValueError, TypeError, UnicodeDecodeError)):
            eng.wait_result(run_id, timeout=10).output  # noqa: B018
    assert not marker.exists()
