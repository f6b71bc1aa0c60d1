"""A trigger stats the store's folder, not each of its files, while the folder is unchanged.

The store's file and its intake are checked (deleted? replaced?) before every commit. Once the
folder holding them has been quiet long enough for its stamps to be trusted, one stat() of the
folder stands for both. These tests break the world after that point: a file deleted, a file
replaced and the folder's mtime set back by hand, and a folder changed within one tick of its
file system's clock (never trusted). The folder's stamps are real; only the clock they are
compared with is moved, so no test waits for a stamp to settle.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine, StoreError
from nbtasks.stores import _trust
from nbtasks.stores._trust import COARSE_SETTLE_NS, SETTLE_NS, FolderWatch


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path stat()ed on this thread (the cell's), in order; the engine's threads check
    the files too, before their own commits."""
    seen: list[str] = []
    real = os.stat
    me = threading.get_ident()

    def counting(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if threading.get_ident() == me:
            seen.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(_trust.os, "stat", counting)
    return seen


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[Engine]:
    with Engine(store=str(tmp_path / ".nbtasks" / "runs.db")) as engine:
        yield engine


def _later(engine: Engine, seconds: float) -> None:
    """The folder's stamps are `seconds` old, as far as its watch can tell."""
    engine.store._folder.clock = lambda: time.time_ns() + int(seconds * 1e9)  # type: ignore[attr-defined]


def _echo(engine: Engine) -> Any:
    return engine.task(id="echo", run=lambda payload, ctx: payload)


@pytest.mark.timeout(60)
def test_a_settled_folder_costs_one_stat_a_trigger(eng: Engine, stats: list[str]) -> None:
    echo = _echo(eng)
    _later(eng, 10)
    folder = eng.store._folder.folder  # type: ignore[attr-defined]
    echo.trigger(0)  # the folder, then both files: found ours, so the folder is trusted
    assert stats == [folder, f"{folder}/runs.db", f"{folder}/runs.db-intake"]
    stats.clear()
    for i in range(5):
        echo.trigger(i)
    assert stats == [folder] * 5


@pytest.mark.timeout(60)
def test_a_folder_changed_within_a_tick_is_not_trusted(eng: Engine, stats: list[str]) -> None:
    """Stamps younger than SETTLE_NS could miss a change made in the same tick: the files are
    checked each time, as without the watch, and the folder is not even looked at again
    until its stamps are old enough."""
    echo = _echo(eng)
    folder = eng.store._folder.folder  # type: ignore[attr-defined]
    stamps = os.stat(folder)
    changed = max(stamps.st_mtime_ns, stamps.st_ctime_ns)
    eng.store._folder.clock = lambda: changed + SETTLE_NS // 2  # type: ignore[attr-defined]
    stats.clear()
    for i in range(3):
        echo.trigger(i)
    files = [f"{folder}/runs.db", f"{folder}/runs.db-intake"]
    assert [p for p in stats if p != folder] == files * 3  # both files, every time
    assert stats.count(folder) <= 1  # the folder looked at once at most, then left alone


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("files", "error"), [
    (("runs.db-intake", "runs.db-intake-wal", "runs.db-intake-shm"), r"runs\.db-intake.*deleted"),
    (("runs.db", "runs.db-wal", "runs.db-shm"), r"runs\.db.*deleted")])
def test_a_file_deleted_in_a_trusted_folder_stops_triggers(
        eng: Engine, files: tuple[str, ...], error: str) -> None:
    echo = _echo(eng)
    _later(eng, 10)
    assert echo.trigger(1).wait(timeout=30).output == 1  # trusted from here
    folder = Path(eng.store._folder.folder)  # type: ignore[attr-defined]
    for name in files:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(StoreError, match=error):
        echo.trigger(2)
    assert not (folder / files[0]).exists()  # never written into the void, nor made again


@pytest.mark.timeout(60)
def test_a_store_replaced_and_its_folder_mtime_set_back_is_still_noticed(
        eng: Engine, tmp_path: Path) -> None:
    """A file swapped in, then the folder's mtime restored by hand (`touch -d`): its ctime
    can't be set back, so the folder is not taken for unchanged."""
    echo = _echo(eng)
    _later(eng, 10)
    echo.trigger(1).wait(timeout=30)
    folder = Path(eng.store._folder.folder)  # type: ignore[attr-defined]
    before = os.stat(folder)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    os.replace(other, folder / "runs.db")
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(folder).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(StoreError, match=r"runs\.db.*replaced"):
        echo.trigger(2)


@pytest.mark.timeout(30)
def test_whole_second_stamps_settle_only_after_the_coarse_delay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system stamping whole seconds (FAT, HFS+) can't be made here: its stat() is
    stood in for, and the folder is trusted only COARSE_SETTLE_NS after its last change."""
    stamp = 1_700_000_000 * 10**9  # no fraction of a second
    real = os.stat(tmp_path)
    fake = os.stat_result((real.st_mode, 1, 2, 1, 0, 0, 0, 0, 0, 0,
                           None, None, None, stamp, stamp, stamp))
    real_stat = os.stat
    monkeypatch.setattr(_trust.os, "stat", lambda path, *args, **kwargs: (
        fake if os.fspath(path) == str(tmp_path) else real_stat(path, *args, **kwargs)))
    now = [stamp + SETTLE_NS * 2]
    watch = FolderWatch(str(tmp_path), clock=lambda: now[0])
    assert watch.look() is None  # past SETTLE_NS, but not past the coarse delay
    now[0] = stamp + COARSE_SETTLE_NS
    key = watch.look()
    assert key == (2, 1, stamp, stamp)  # (st_dev, st_ino, mtime, ctime)
    watch.trust(key)
    assert watch.unchanged(watch.look())
