"""The store is checked before it is trusted, and watched while it is used.

Its rows decide what the kernel executes, so a store another user owns, or reaches through a
symlink, is refused; loose modes on our own files are tightened (with a warning); a store
deleted or replaced under a running engine stops it accepting triggers; a start-up that fails
on a corrupt file names the file and lets the interpreter exit.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbtasks import Engine, StoreError

ROOT = Path(__file__).resolve().parents[2]


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _make_store(db: Path, runs: int = 3) -> None:
    with Engine(store=str(db)) as eng:
        task = eng.task(id="echo", run=lambda payload, ctx: payload)
        for i in range(runs):
            task.trigger(i).wait(timeout=30)


def _count(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
    finally:
        con.close()


# ---------------------------------------------------------------- symlinks and modes


def test_a_symlink_at_the_store_path_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(b"")
    store = tmp_path / ".nbtasks"
    store.mkdir(mode=0o700)
    (store / "runs.db").symlink_to(elsewhere)
    with pytest.raises(StoreError, match=r"runs\.db.*symlink"):
        Engine(store=str(store / "runs.db"))
    assert elsewhere.read_bytes() == b""  # never opened, never written


@pytest.mark.parametrize("side", ["-wal", "-shm"])
def test_a_symlink_planted_at_wal_or_shm_is_refused(tmp_path: Path, side: str) -> None:
    db = tmp_path / ".nbtasks" / "runs.db"
    _make_store(db)
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    db.with_name("runs.db" + side).symlink_to(target)
    with pytest.raises(StoreError, match=rf"runs\.db{side}.*symlink"):
        Engine(store=str(db))
    assert target.read_bytes() == b"precious"


def test_loose_modes_on_our_own_store_are_tightened_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / ".nbtasks"
    db = folder / "runs.db"
    _make_store(db)
    folder.chmod(0o777)
    db.chmod(0o666)
    for side in ("-wal", "-shm"):  # as a kernel that ran under umask 0 would have left them
        p = db.with_name("runs.db" + side)
        p.touch()
        p.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="nbtasks"), Engine(store=str(db)) as eng:
        task = eng.task(id="echo", run=lambda payload, ctx: payload)
        assert task.trigger(1).wait(timeout=30).output == 1
        assert _mode(folder) == 0o700
        for p in (db, db.with_name("runs.db-wal"), db.with_name("runs.db-shm")):
            assert _mode(p) == 0o600, p
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "had mode 777" in warned and "had mode 666" in warned


def test_a_new_store_is_owner_only_even_under_umask_zero(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / ".nbtasks" / "runs.db"
    old = os.umask(0)
    try:
        eng = Engine(store=str(db))
    finally:
        os.umask(old)
    try:
        eng.task(id="echo", run=lambda payload, ctx: payload).trigger(1).wait(timeout=30)
        assert _mode(db.parent) == 0o700
        for p in (db, db.with_name("runs.db-wal"), db.with_name("runs.db-shm")):
            assert _mode(p) == 0o600, p
    finally:
        eng.close()


# ---------------------------------------------------------------- another user's store

_NOBODY = "nobody"


def _as_nobody_python() -> str:
    """An interpreter another user can run (ours may live in a private home), or skip."""
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner to another user needs root")
    try:
        pwd.getpwnam(_NOBODY)
    except KeyError:
        pytest.skip("no 'nobody' user here")
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if os.path.exists(cand) and subprocess.run(
                [cand, "-c", "import sqlite3"], user=_NOBODY, capture_output=True,
                timeout=30).returncode == 0:
            return cand
    pytest.skip("no Python interpreter the 'nobody' user may run")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder other users can reach (pytest's tmp_path is 0700 all the way up)."""
    d = Path(tempfile.mkdtemp(prefix="nbtasks-shared-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


_ATTACK = textwrap.dedent("""
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
    con.execute(
        "INSERT INTO runs (id, task_id, status, payload, created_at, updated_at, queued_at, "
        "attempt_count, is_test, queue, owner) VALUES ('run_planted', 'echo', 'QUEUED', "
        "'\\"attacker payload\\"', ?, ?, ?, 0, 0, 'task/echo', 'eng_gone')",
        (time.time(), time.time(), time.time()))
""")


def _attack(python: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", _ATTACK, str(db)], user=_NOBODY, capture_output=True,
                          text=True, timeout=60)


def test_another_users_queued_row_never_runs(shared_dir: Path) -> None:
    """The issue's attack: another local user writes a QUEUED row into a world-writable store.

    Before the fix the next kernel ran the planted payload. Now the first open takes the
    world's access away (so the insert fails), and a store the other user owns is refused.
    """
    python = _as_nobody_python()
    folder = shared_dir / ".nbtasks"
    db = folder / "runs.db"
    _make_store(db)
    folder.chmod(0o777)
    for p in folder.iterdir():
        p.chmod(0o666)
    # 1. A world-writable store of ours: our next open locks the other user out.
    ran: list[object] = []
    with Engine(store=str(db)) as eng:
        eng.task(id="echo", run=lambda payload, ctx: ran.append(payload))
        attack = _attack(python, db)
        assert attack.returncode != 0, "the other user could still write the store"
        assert "unable to open" in attack.stderr or "readonly" in attack.stderr \
            or "ermission" in attack.stderr, attack.stderr
    assert _count(db) == 3
    # 2. The other user plants a store of their own where ours would be: refused outright.
    shutil.rmtree(folder)
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    _make_store(db)
    for p in [folder, *folder.iterdir()]:
        os.chown(p, pwd.getpwnam(_NOBODY).pw_uid, -1)
    assert _attack(python, db).returncode == 0  # their file, their row
    with pytest.raises(StoreError, match=r"owned by uid \d+"):
        Engine(store=str(db))
    os.chown(folder, 0, -1)  # our folder, their file: still refused
    with pytest.raises(StoreError, match=r"runs\.db.*owned by uid \d+"):
        Engine(store=str(db))
    assert ran == []


# ---------------------------------------------------------------- the file goes away


def test_a_deleted_store_stops_triggers_and_is_not_recreated(tmp_path: Path) -> None:
    db = tmp_path / ".nbtasks" / "runs.db"
    eng = Engine(store=str(db))
    try:
        task = eng.task(id="echo", run=lambda payload, ctx: payload)
        assert task.trigger(1).wait(timeout=30).ok
        for p in (db, db.with_name("runs.db-wal"), db.with_name("runs.db-shm")):
            p.unlink(missing_ok=True)
        with pytest.raises(StoreError, match=r"runs\.db.*deleted"):
            task.trigger(2)
        with pytest.raises(StoreError, match="deleted"):
            task.batch_trigger([3, 4])
        assert eng.store.lost is not None  # type: ignore[attr-defined]
        # A reader on a fresh thread (a widget refresh, a DataFrame) must not create a new file.
        seen: list[BaseException] = []
        reader = threading.Thread(target=lambda: _catch(seen, eng.runs.list))
        reader.start()
        reader.join(30)
        assert seen and isinstance(seen[0], StoreError), seen
        assert not db.exists()
    finally:
        eng.close()
    assert not db.exists()


def _catch(into: list[BaseException], fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        into.append(exc)


def test_a_replaced_store_stops_triggers(tmp_path: Path) -> None:
    db = tmp_path / ".nbtasks" / "runs.db"
    other = tmp_path / "other.db"
    _make_store(other)
    with Engine(store=str(db)) as eng:
        task = eng.task(id="echo", run=lambda payload, ctx: payload)
        assert task.trigger(1).wait(timeout=30).ok
        before = _count(other)
        for side in ("-wal", "-shm"):  # the new file comes alone, as a restore from backup would
            db.with_name("runs.db" + side).unlink()
        os.replace(other, db)
        with pytest.raises(StoreError, match=r"runs\.db.*replaced"):
            task.trigger(2)
    assert _count(db) == before  # the file put in its place was not written into


# ---------------------------------------------------------------- failed start-up

_OPEN = textwrap.dedent("""
    import sys
    from nbtasks import Engine, StoreError
    try:
        Engine(store=sys.argv[1])
    except StoreError as exc:
        print("StoreError:", exc)
    else:
        print("opened")
""")


def _open_in_subprocess(db: Path) -> subprocess.CompletedProcess[str]:
    """Opening `db` in a fresh interpreter, which must also manage to exit afterwards.

    Before the fix it never exited (the engine thread was left running), so a generous
    timeout tells a hang from a slow, loaded machine.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _OPEN, str(db)], capture_output=True,
                          text=True, timeout=90, env=env, cwd=db.parent)


@pytest.mark.timeout(120)
def test_a_corrupt_page_fails_start_up_naming_the_file_and_the_kernel_exits(
        tmp_path: Path) -> None:
    db = tmp_path / ".nbtasks" / "runs.db"
    with Engine(store=str(db)) as eng:
        task = eng.task(id="echo", run=lambda payload, ctx: payload)
        for _ in range(4):
            task.batch_trigger(list(range(500))).wait(timeout=60)
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    pages = db.stat().st_size // 4096
    with db.open("r+b") as f:  # the header and schema stay; pages in the middle are garbage
        for page in range(pages // 3, pages - 2):
            f.seek(page * 4096)
            f.write(os.urandom(4096))
    proc = _open_in_subprocess(db)
    assert proc.returncode == 0, proc.stderr
    assert f"StoreError: {db}" in proc.stdout and "malformed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("content", [b"this is not a database, but it is long enough" * 40,
                                     b"SQLite format 3\x00" + b"\xff" * 200])
def test_a_file_that_is_not_a_database_is_named(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / ".nbtasks"
    folder.mkdir(mode=0o700)
    db = folder / "runs.db"
    db.write_bytes(content)
    db.chmod(0o600)
    with pytest.raises(StoreError) as info:
        Engine(store=str(db))
    assert str(db) in str(info.value)
    proc = _open_in_subprocess(db)
    assert proc.returncode == 0 and f"StoreError: {db}" in proc.stdout, proc.stdout + proc.stderr


def test_a_store_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    folder = tmp_path / ".nbtasks"
    folder.mkdir(mode=0o700)
    db = folder / "runs.db"
    db.mkdir()  # a folder where the file should be
    with pytest.raises(StoreError, match=rf"{db}.*not a regular file"):
        Engine(store=str(db))


@pytest.mark.timeout(60)
def test_waiters_on_runs_in_flight_hear_that_a_deleted_store_lost_them(tmp_path: Path) -> None:
    """A run that executes while its file is deleted can't end durably: whoever waits for it,
    or for a run queued behind it, gets the StoreError instead of waiting for ever, and the
    engine closes at once."""
    db = tmp_path / ".nbtasks" / "runs.db"
    eng = Engine(store=str(db))
    gate = threading.Event()
    try:
        @eng.task(id="slow", queue={"concurrency_limit": 1})
        def slow(payload: int, ctx: object) -> int:
            gate.wait(30)
            return payload

        first, behind = slow.trigger(1), slow.trigger(2)
        assert eng.runs.retrieve(first.id) is not None
        answers: dict[str, BaseException | object] = {}
        waiters = [threading.Thread(target=lambda h=h: answers.__setitem__(
            h.id, _outcome(lambda: h.wait(timeout=30)))) for h in (first, behind)]
        for w in waiters:
            w.start()
        for p in (db, db.with_name("runs.db-wal"), db.with_name("runs.db-shm")):
            p.unlink(missing_ok=True)
        gate.set()  # the first run ends; its end can't be written
        for w in waiters:
            w.join(30)
        assert set(answers) == {first.id, behind.id}
        for answer in answers.values():
            assert isinstance(answer, StoreError) and "deleted" in str(answer), answer
        assert eng.store_problem is not None and "deleted" in eng.store_problem
        late = _outcome(lambda: behind.wait(timeout=30))  # a late waiter hears it too
        assert isinstance(late, StoreError) and "deleted" in str(late), late
    finally:
        started = time.monotonic()
        eng.close()
    assert time.monotonic() - started < 5
    assert not db.exists()


def _outcome(fn: object) -> object:
    try:
        return fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc
