"""The DataFrame contract: columns, dtypes, categoricals and UTC timestamps, on both read paths.

The frames are read through ADBC into Arrow when the `arrow` extra is installed, and through the
stdlib sqlite3 driver otherwise. Either way, and for an empty store as for a full one, a frame
has the same columns with the same dtypes, and the two paths give equal frames.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nbtasks import Engine, RunStatus, RunWaitTimeoutError, _arrow
from nbtasks.executors import InlineExecutor
from nbtasks.testing import ManualClock

UTC_TIME = "datetime64[ns, UTC]"
RUNS = {"id": "str", "task_id": "category", "status": "category", "created_at": UTC_TIME,
        "started_at": UTC_TIME, "finished_at": UTC_TIME, "duration_ms": "float64",
        "attempts": "int64", "machine": "category", "queue": "category",
        "concurrency_key": "str", "tags": "object", "error_type": "category",
        "error_message": "str", "is_test": "bool", "parent_id": "str", "root_id": "str",
        "batch_id": "str", "idempotency_key": "str"}
ATTEMPTS = {"run_id": "str", "task_id": "category", "attempt": "int64", "status": "category",
            "started_at": UTC_TIME, "finished_at": UTC_TIME, "duration_ms": "float64",
            "machine": "category", "queue": "category", "concurrency_key": "str",
            "error_type": "category", "error_message": "str", "tags": "object"}
LOGS = {"ts": UTC_TIME, "level": "category", "message": "str", "attributes": "object"}
PATHS = ["arrow", "stdlib"]


@pytest.fixture(params=PATHS)
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "arrow":
        assert _arrow.AVAILABLE, "the dev extra installs adbc-driver-sqlite and pyarrow"
    else:
        monkeypatch.setattr(_arrow, "AVAILABLE", False)
    return str(request.param)


@pytest.fixture
def full(db_path: Path) -> Iterator[tuple[Engine, dict[str, str]]]:
    """Runs that fill every column: tags, errors, retries, machines, keys, a child, a queued
    run that never started (NULL times), a log line with attributes and one without."""
    clock = ManualClock()
    eng = Engine(store=str(db_path), clock=clock, executor=InlineExecutor())
    import nbtasks

    @eng.task(id="flaky", retry={"max_attempts": 2, "min_timeout_in_ms": 1000,
                                 "randomize": False})
    async def flaky(p: int, ctx: Any) -> int:
        nbtasks.logger.info("try", attempt=ctx.attempt.number)
        nbtasks.logger.warn("plain")
        if ctx.attempt.number < p:
            raise ValueError(f"boom {ctx.attempt.number}")
        return p

    @eng.task(id="parent", queue={"name": "shared", "concurrency_limit": 1})
    async def parent(p: int, ctx: Any) -> int:
        return (await flaky.trigger_and_wait(1, idempotency_key="child")).unwrap()

    ids = {
        "tagged": flaky.trigger(1, tags=["nightly", "eu"], machine="micro").id,
        "retried": flaky.trigger(2, concurrency_key="user-1").id,
        "failed": flaky.trigger(9).id,
        "parent": parent.trigger(0).id,
        "delayed": flaky.trigger(1, delay="1d", tags=["later"]).id,
    }
    # A trigger returns once its run is committed; its first attempt starts just after. So the
    # retry's back-off may be set after a first advance: move time until every run is final.
    started = [ids[k] for k in ("tagged", "retried", "failed", "parent")]
    for _ in range(100):
        clock.advance(1)
        try:
            eng.wait_results(started, timeout=0.1)
            break
        except RunWaitTimeoutError:
            continue
    eng.wait_results(started, timeout=10)
    try:
        yield eng, ids
    finally:
        eng.close()


def _check(df: pd.DataFrame, spec: dict[str, str]) -> None:
    assert list(df.columns) == list(spec)
    for name, kind in spec.items():
        dtype = df[name].dtype
        if kind == "category":
            assert isinstance(dtype, pd.CategoricalDtype), name
            assert dtype.categories.dtype == "str", name
        else:
            assert dtype == kind, (name, dtype)
            if kind == UTC_TIME:
                assert str(df[name].dt.tz) == "UTC"
    if "status" in spec:
        assert list(df.status.cat.categories) == [s.value for s in RunStatus]


def test_an_empty_store_keeps_the_columns_and_dtypes(engine: Engine, read_path: str) -> None:
    _check(engine.runs.to_dataframe(), RUNS)
    _check(engine.runs.attempts_dataframe(), ATTEMPTS)
    _check(engine.runs.logs("run_missing"), LOGS)
    assert len(engine.runs.to_dataframe()) == 0


def test_a_full_store_keeps_the_columns_and_dtypes(
        full: tuple[Engine, dict[str, str]], read_path: str) -> None:
    eng, ids = full
    runs = eng.runs.to_dataframe()
    _check(runs, RUNS)
    _check(eng.runs.to_dataframe(task_id="nobody"), RUNS)  # empty result of a full store
    _check(eng.runs.to_dataframe(limit=2), RUNS)
    attempts = eng.runs.attempts_dataframe()
    _check(attempts, ATTEMPTS)
    _check(eng.runs.attempts_dataframe(status="EXECUTING"), ATTEMPTS)
    logs = eng.runs.logs(ids["tagged"])
    _check(logs, LOGS)
    assert logs.attributes.tolist() == [{"attempt": 1}, None]
    row = runs.set_index("id")
    assert len(runs) == 6  # the parent's child too
    assert row.loc[ids["tagged"], "tags"] == ("nightly", "eu")
    assert row.loc[ids["retried"], "tags"] == ()
    assert row.loc[ids["tagged"], "machine"] == "micro"
    assert row.loc[ids["retried"], "concurrency_key"] == "user-1"
    assert row.loc[ids["failed"], "error_type"] == "ValueError"
    assert row.loc[ids["failed"], "error_message"] == "boom 2"
    assert pd.isna(row.loc[ids["delayed"], "started_at"])
    assert pd.isna(row.loc[ids["delayed"], "duration_ms"])
    assert row.loc[ids["delayed"], "status"] == "DELAYED"
    child = runs[runs.parent_id == ids["parent"]]
    assert len(child) == 1 and child.idempotency_key.notna().all()
    assert list(runs.queue.cat.categories) == sorted({"shared", "task/flaky"})
    assert list(runs.machine.cat.categories) == ["kernel", "micro"]  # by size, not by name
    assert attempts[attempts.run_id == ids["retried"]].error_type.tolist()[0] == "ValueError"


def test_both_paths_give_equal_frames(full: tuple[Engine, dict[str, str]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    eng, ids = full
    reads = {
        "runs": lambda: eng.runs.to_dataframe(),
        "newest": lambda: eng.runs.to_dataframe(limit=3),
        "attempts": lambda: eng.runs.attempts_dataframe(),
        "failed attempts": lambda: eng.runs.attempts_dataframe(status="FAILED", limit=2),
        "logs": lambda: eng.runs.logs(ids["failed"]),
        "empty": lambda: eng.runs.attempts_dataframe(task_id="nobody"),
    }
    arrow = {name: read() for name, read in reads.items()}
    monkeypatch.setattr(_arrow, "AVAILABLE", False)
    for name, read in reads.items():
        pd.testing.assert_frame_equal(arrow[name], read(), check_exact=True, obj=name)


def test_a_large_history_is_read_in_parts_that_make_the_same_frame(
        full: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Above a size, frames read disjoint rowid ranges of the runs on as many threads as there
    are cores. Made small here: six runs over four parts, so some parts have a column all NULL
    (typed int64 by the driver) that others have as text. The frames are those of one query."""
    from nbtasks import frames

    eng, _ = full
    reads = {
        "runs": lambda: eng.runs.to_dataframe(),
        "tagged": lambda: eng.runs.to_dataframe(tag="nightly"),
        "attempts": lambda: eng.runs.attempts_dataframe(),
        "failed attempts": lambda: eng.runs.attempts_dataframe(status="FAILED"),
        "newest": lambda: eng.runs.to_dataframe(limit=3),
        "spans": lambda: eng.runs.spans_dataframe(),
        "empty": lambda: eng.runs.attempts_dataframe(task_id="nobody"),
    }
    whole = {name: read() for name, read in reads.items()}
    fetched: list[int] = []
    real_fetch = _arrow.fetch
    monkeypatch.setattr(_arrow, "fetch", lambda path, parts, **kw: fetched.append(len(parts))
                        or real_fetch(path, parts, **kw))
    monkeypatch.setattr(frames, "_PART_ROWS", 1)
    monkeypatch.setattr(frames.os, "cpu_count", lambda: 4)
    for name, read in reads.items():
        fetched.clear()
        pd.testing.assert_frame_equal(read(), whole[name], check_exact=True, obj=name)
        assert fetched == ([1] if name == "newest" else [4]), name  # a limit reads newest first
    monkeypatch.setattr(frames.os, "cpu_count", lambda: 1)
    fetched.clear()
    pd.testing.assert_frame_equal(eng.runs.to_dataframe(), whole["runs"], check_exact=True)
    assert fetched == [1]  # one core: one query


def test_a_column_the_driver_cannot_type_falls_back_to_the_stdlib_path(
        full: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver types a column from its first rows; one that is NULL there and text later
    cannot be read as Arrow. The frame still comes, from the stdlib path."""
    eng, ids = full
    monkeypatch.setattr(_arrow, "_BATCH_ROWS", "1")  # infer from the first row only
    runs = eng.runs.to_dataframe()
    assert runs.set_index("id").loc[ids["retried"], "concurrency_key"] == "user-1"
    _check(runs, RUNS)


def test_without_the_arrow_extra_frames_use_the_stdlib_driver(tmp_path: Path) -> None:
    """A fresh interpreter where pyarrow and ADBC cannot be imported, as without the extra."""
    code = """
import sys
sys.modules["pyarrow"] = None
sys.modules["adbc_driver_sqlite"] = None
import nbtasks
from nbtasks import _arrow
eng = nbtasks.Engine(store="runs.db")
@eng.task(id="t")
async def t(p, ctx):
    return p
t.batch_trigger([1, 2, 3]).wait(timeout=30)
df = eng.runs.to_dataframe()
print(_arrow.AVAILABLE, len(df), df.status.tolist(), str(df.created_at.dt.tz))
eng.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=90, check=True)
    assert out.stdout.split() == ["False", "3", "['COMPLETED',", "'COMPLETED',", "'COMPLETED']",
                                  "UTC"]


def test_columns_reads_and_decodes_only_those(full: tuple[Engine, dict[str, str]],
                                              read_path: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from nbtasks import frames

    eng, _ = full
    whole = eng.runs.to_dataframe()
    decoded: list[str] = []
    for name in ("loads_or", "tags_of"):  # the frame's two decoders of stored JSON
        real = getattr(frames, name)
        monkeypatch.setattr(frames, name,
                            lambda text, real=real: decoded.append(text) or real(text))
    lean = eng.runs.to_dataframe(columns=["id", "duration_ms", "status"])
    assert decoded == []  # no tags decoded: they were not asked for
    assert list(lean.columns) == ["id", "duration_ms", "status"]
    pd.testing.assert_frame_equal(lean, whole[["id", "duration_ms", "status"]])
    with_tags = eng.runs.attempts_dataframe(columns=["tags", "run_id"])
    assert decoded and list(with_tags.columns) == ["tags", "run_id"]
    pd.testing.assert_frame_equal(with_tags,
                                  eng.runs.attempts_dataframe()[["tags", "run_id"]])


@pytest.mark.parametrize("bad", [["id", "nope"], "id", [], ["id", "id"], [3]])
def test_bad_columns_raise(engine: Engine, bad: Any) -> None:
    from nbtasks import ConfigurationError

    with pytest.raises(ConfigurationError, match="columns must be"):
        engine.runs.to_dataframe(columns=bad)
    with pytest.raises(ConfigurationError, match="columns must be"):
        engine.runs.attempts_dataframe(columns=bad)


def test_attempts_arrow_is_the_attempts_frame_as_an_arrow_table(
        full: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    eng, ids = full
    table = eng.runs.attempts_arrow(task_id="flaky")
    frame = eng.runs.attempts_dataframe(task_id="flaky")
    assert table.column_names == list(ATTEMPTS) and table.num_rows == len(frame) > 0
    assert pa.types.is_dictionary(table.schema.field("status").type)
    assert table.schema.field("started_at").type == pa.timestamp("ns", tz="UTC")
    tags = dict(zip(table.column("run_id").to_pylist(), table.column("tags").to_pylist(),
                    strict=True))
    assert tags[ids["tagged"]] == ["nightly", "eu"] and tags[ids["retried"]] == []
    assert table.column("attempt").to_pylist() == frame.attempt.tolist()
    monkeypatch.setattr(_arrow, "AVAILABLE", False)
    with pytest.raises(ImportError, match=r"pip install nbtasks\[arrow\]"):
        eng.runs.attempts_arrow()


def test_times_convert_to_the_nanosecond_as_pandas_does() -> None:
    """Frames turn epoch seconds into UTC times with whole-array arithmetic; every value, NaN
    and the float noise below a nanosecond included, comes out as pd.to_datetime gives it."""
    import numpy as np

    from nbtasks.frames import _utc

    rng = np.random.default_rng(13)
    seconds = np.concatenate([rng.uniform(1.7e9, 1.8e9, 200_000), rng.uniform(-4e9, 4e9, 50_000),
                              np.round(rng.uniform(0, 2e9, 1_000)),
                              [np.nan, 0.0, -0.5, 1e-10, 0.9999999999, 1_780_000_000.123456789]])
    for values in (seconds, seconds[:0], np.full(3, np.nan)):
        expected = pd.to_datetime(values, unit="s", utc=True).as_unit("ns")
        got = _utc(values)
        assert got.dtype == expected.dtype == UTC_TIME
        assert (got.asi8 == expected.asi8).all() and got.isna().tolist() == expected.isna().tolist()
    with pytest.raises(pd.errors.OutOfBoundsDatetime):
        _utc(np.array([1e20]))


def test_a_reader_waits_for_a_lock_like_the_store_does(tmp_path: Path) -> None:
    """Parts open their connections at once, and a reader can find a lock briefly held (the WAL
    index, a checkpoint). The driver's default is to fail at once, which would send a large
    frame down the slow stdlib path: readers wait up to the store's busy timeout instead. Here
    another process holds an exclusive lock on a rollback-journal file and lets go when told."""
    import sqlite3
    import threading
    from contextlib import closing

    path = tmp_path / "locked.db"
    with closing(sqlite3.connect(path)) as setup, setup:
        setup.execute("CREATE TABLE t (x)")
        setup.execute("INSERT INTO t VALUES (1), (2)")
    setup.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
         "sys.stdin.readline(); c.execute('COMMIT')"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(_arrow.Mismatch, match="locked"):
            _arrow.fetch(str(path), [("SELECT x FROM t", [])], busy_timeout=0.01)
        release = threading.Timer(0.2, holder.communicate, ["go\n"])
        release.start()
        tables = _arrow.fetch(str(path), [("SELECT x FROM t", []), ("SELECT x FROM t", [])],
                              busy_timeout=30)
        assert [t.column(0).to_pylist() for t in tables] == [[1, 2], [1, 2]]
        release.join()
    finally:
        holder.kill()
        holder.wait()


def test_reading_a_frame_keeps_the_stores_locks(db_path: Path) -> None:
    """The driver's SQLite runs in a process of its own. In the kernel's process it would be a
    second copy of SQLite, and closing its connection would drop the POSIX locks the store's
    connections hold on the file: here, the write lock of an open transaction, letting another
    process write at the same time. After the read, the other process must still be refused."""
    import sqlite3

    probe = ("import sqlite3, sys\n"
             "c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
             "try:\n    c.execute('BEGIN IMMEDIATE'); print('wrote')\n"
             "except sqlite3.OperationalError as e:\n    print(e)\n")

    def other_process_writes() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(db_path)], capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()

    with Engine(store=str(db_path)) as eng:
        eng.runs.to_dataframe()  # the schema exists; a reader process may be started
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert other_process_writes() == "database is locked"
        tables = _arrow.fetch(str(db_path), [("SELECT count(*) FROM runs", [])] * 2)
        assert [t.column(0).to_pylist() for t in tables] == [[0], [0]]
        assert other_process_writes() == "database is locked"
        writer.execute("ROLLBACK")
    finally:
        writer.close()


def test_a_killed_reader_process_is_replaced(full: tuple[Engine, dict[str, str]]) -> None:
    """The reader process is started on first use and kept; killed (out of memory, by hand), the
    next frame starts another, and the frame is the one read before."""
    eng, _ = full
    before = eng.runs.to_dataframe()
    first = _arrow._process
    assert first is not None and first.poll() is None
    first.kill()
    first.wait(timeout=30)
    pd.testing.assert_frame_equal(eng.runs.to_dataframe(), before, check_exact=True)
    assert _arrow._process is not None and _arrow._process.pid != first.pid


def test_answers_are_owner_only_files_in_shared_memory_gone_once_read(
        full: tuple[Engine, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader hands each table back as a file the kernel reads: made 0600, in /dev/shm where
    there is one, and unlinked as soon as it is read, so nothing is left behind. Read, not
    mapped: a frame the user keeps holds no shared memory (no mapping of those files remains)."""
    eng, _ = full
    seen: list[tuple[str, int]] = []
    take = _arrow._take

    def spy(name: str) -> Any:
        seen.append((name, os.stat(name).st_mode & 0o777))
        return take(name)

    monkeypatch.setattr(_arrow, "_take", spy)
    frame = eng.runs.attempts_dataframe()
    assert len(frame) > 0 and seen
    for name, mode in seen:
        assert mode == 0o600, oct(mode)
        if os.path.isdir("/dev/shm"):
            assert name.startswith("/dev/shm/nbtasks-frame-"), name
        assert not os.path.exists(name), name
    arrow = eng.runs.attempts_arrow()  # the table itself, kept by the caller
    assert arrow.num_rows == len(frame)
    if os.path.exists("/proc/self/maps"):  # Linux: what this process has mapped
        assert "nbtasks-frame-" not in Path("/proc/self/maps").read_text()


def _reader_process(shared: str | None = None) -> subprocess.Popen[bytes]:
    """A reader process of our own, optionally told to use `shared` as its shared memory."""
    script = Path(_arrow.__file__).with_name("_arrow_reader.py")
    code = (f"import sys; sys.path.insert(0, {str(script.parent)!r}); import _arrow_reader as r; "
            f"r.SHARED = {shared!r} or r.SHARED; r.main()")
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)


def _request(db_path: Path) -> bytes:
    return json.dumps({"path": str(db_path), "busy_timeout": 5, "batch_rows": "1024",
                       "parts": [["SELECT count(*) FROM runs", []]]}).encode() + b"\n"


def test_a_reader_without_usable_shared_memory_writes_to_the_temporary_directory(
        db_path: Path, tmp_path: Path) -> None:
    """Shared memory can be missing or too small (a container's is often 64 MiB): the answer
    then goes to the temporary directory, still owner-only, still unlinked once read."""
    Engine(store=str(db_path)).close()
    reader = _reader_process(shared=str(tmp_path / "no-such-dir"))
    assert reader.stdin is not None and reader.stdout is not None
    try:
        reader.stdin.write(_request(db_path))
        reader.stdin.flush()
        (name,) = json.loads(reader.stdout.readline())["files"]
        assert os.path.dirname(name) == tempfile.gettempdir()
        assert os.stat(name).st_mode & 0o777 == 0o600
        assert _arrow._take(name).column(0).to_pylist() == [0]
        assert not os.path.exists(name)
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)
        reader.stdout.close()


def test_a_file_the_kernel_never_took_is_removed_by_the_reader(db_path: Path) -> None:
    """A kernel that dies between the answer and the read leaves its files behind: the reader
    removes them at its next request, and when its stdin closes (which the kernel's death does)."""
    Engine(store=str(db_path)).close()
    reader = _reader_process()
    assert reader.stdin is not None and reader.stdout is not None
    request = _request(db_path)
    try:
        names = []
        for _ in range(2):
            reader.stdin.write(request)
            reader.stdin.flush()
            names.append(json.loads(reader.stdout.readline())["files"][0])
            assert os.path.exists(names[-1])
        assert not os.path.exists(names[0])  # gone at the second request
        reader.stdin.close()
        assert reader.wait(timeout=30) == 0
        assert not os.path.exists(names[1])  # gone at the end
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(timeout=30)
        reader.stdout.close()
