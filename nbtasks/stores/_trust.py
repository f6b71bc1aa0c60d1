"""Is this store file ours? Checked before SQLite reads a byte of it.

A store drives what the kernel executes: a QUEUED row is a run that will start, with its
payload. So a file another local user owns, can write, or can swap is never trusted. Refused:
a store file (or its -wal/-shm) owned by someone else, reached through a symlink, or not a
regular file, and a folder owned by someone else. Tightened, with a warning: modes of files and
folders we own that let others in. The file's identity (device, inode) is remembered so that a
store deleted or replaced while an engine runs is noticed instead of written into the void.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .._errors import StoreError

log = logging.getLogger("nbtasks")

#: SQLite's companions of a WAL database: created by SQLite beside the file, same trust.
SIDE_SUFFIXES = ("-wal", "-shm")

#: os.umask is process-wide: one opener at a time changes and restores it.
_umask_lock = threading.Lock()


def prepare(path: Path) -> tuple[int, int]:
    """Check the folder and files of the store at `path`, create the file (0600) if missing,
    and return its identity `(st_dev, st_ino)`. Raises StoreError naming what is wrong."""
    folder = path.parent
    created = not folder.exists()
    if created:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_folder(folder, private=created or folder.name == ".nbtasks")
    if not os.path.lexists(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except FileExistsError:  # another kernel created it just now: check it like any other
            pass
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the store file: {exc.strerror}") from exc
        else:
            os.close(fd)
    for p in files(path):
        check_file(p, must_exist=p == path)
    st = os.stat(path)
    return st.st_dev, st.st_ino


def files(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + s) for s in SIDE_SUFFIXES)]


def _check_folder(folder: Path, *, private: bool) -> None:
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise StoreError(f"{folder}: cannot use the store's folder: {exc.strerror}") from exc
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StoreError(
            f"{folder}: refusing the store's folder: it is owned by uid {st.st_uid}, not by "
            f"this user (uid {uid}); another user could replace the store in it")
    # Our own `.nbtasks/` is nobody else's business (0700). A folder the user chose (a notebook
    # folder holding `runs.db`) keeps its read bits; only others' write access goes, since that
    # is what lets them plant or swap the store and its -wal/-shm.
    mode = stat.S_IMODE(st.st_mode)
    wanted = mode & ~0o077 if private else mode & ~0o022
    if wanted != mode:
        _tighten(folder, mode, wanted)


def check_file(p: Path, *, must_exist: bool = False) -> None:
    """Refuse `p` unless it is missing (when allowed) or a regular file of ours; make it 0600."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        if must_exist:
            raise StoreError(f"{p}: the store file is missing") from None
        return
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{p}: refusing the store: it is a symlink (to {os.readlink(p)!r}); "
                         "open the real file's path instead")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{p}: refusing the store: it is not a regular file")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StoreError(
            f"{p}: refusing the store: it is owned by uid {st.st_uid}, not by this user "
            f"(uid {uid}); its rows would decide what this kernel runs")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        _tighten(p, mode, 0o600)


def _tighten(p: Path, mode: int, wanted: int) -> None:
    try:
        os.chmod(p, wanted, follow_symlinks=False)
    except OSError as exc:
        raise StoreError(f"{p}: mode {mode:o} lets other users in, and it can't be changed: "
                         f"{exc.strerror}") from exc
    log.warning("%s had mode %o, which lets other users in; changed it to %o", p, mode, wanted)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """While SQLite opens the file it may create -wal and -shm: owner-only from the start."""
    with _umask_lock:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)


def identity_error(path: str, expected: tuple[int, int]) -> StoreError | None:
    """None while `path` is still the file the store opened; else the error to raise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return StoreError(f"{path}: the store file was deleted while the engine was running; "
                          "nothing more can be recorded. Restart the engine to start a new "
                          "history (runs not yet recorded are lost)")
    except OSError as exc:
        return StoreError(f"{path}: the store file can't be checked: {exc.strerror}")
    if (st.st_dev, st.st_ino) != expected:
        return StoreError(f"{path}: the store file was replaced by another file while the "
                          "engine was running; refusing to write into either. Restart the "
                          "engine to open the new file")
    return None


#: Nanoseconds after its last change a folder's stamps are trusted to tell the next change
#: apart. File systems stamp with a coarse clock, so a change in the same tick as the one
#: before it could leave them as they were: a tick is 1 to 10 ms on Linux's own file systems,
#: and whole seconds on some others (FAT, HFS+, ext3), whose stamps then have no fraction.
SETTLE_NS = 100_000_000
COARSE_SETTLE_NS = 3_000_000_000
_SECOND = 1_000_000_000

#: A folder's (st_dev, st_ino, st_mtime_ns, st_ctime_ns).
FolderKey = tuple[int, int, int, int]


class FolderWatch:
    """Whether the entries of the folder holding a store's files may have changed: one stat()
    of the folder instead of one per file, on the path of every `trigger()`.

    Deleting, renaming or replacing a file updates its folder's mtime and ctime (POSIX), and a
    ctime can't be set back. So while the folder's stamps are the ones seen just before its
    files were last found to be the store's own, none of them was deleted or replaced since.
    Each stat() lets the GIL go, and under a busy engine each one costs a wait for it: a
    `trigger()` that stats the folder alone rather than the store's file and its intake's is
    faster in a loop (see the `paths` section of benchmarks/throughput.py). A folder changed
    less than SETTLE_NS ago (COARSE_SETTLE_NS on a file system stamping whole seconds) is not
    trusted: its files are checked each time, as they would be without this, until its
    stamps have settled.
    """

    def __init__(self, folder: str, clock: Callable[[], int] = time.time_ns) -> None:
        self.folder = folder
        #: The file system's clock's reading now (its stamps are wall-clock time).
        self.clock = clock
        #: The folder's stamps when its files were last found to be ours, once settled.
        self._trusted: FolderKey | None = None
        #: Before this (ns, by `clock`), the folder changed too lately to look at it.
        self._settles_at = 0

    def look(self) -> FolderKey | None:
        """The folder's stamps if they may be trusted (settled), else None: then check the
        files. Call before checking them; `trust` what this returned once they passed."""
        now = self.clock()
        if now < self._settles_at:
            return None
        try:
            st = os.stat(self.folder)
        except OSError:
            return None
        changed = max(st.st_mtime_ns, st.st_ctime_ns)
        settle = (SETTLE_NS if st.st_mtime_ns % _SECOND or st.st_ctime_ns % _SECOND
                  else COARSE_SETTLE_NS)
        if now - changed < settle:
            self._settles_at = changed + settle
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    def unchanged(self, key: FolderKey | None) -> bool:
        """`key` (from `look`) is the one trusted: no file in the folder changed since."""
        return key is not None and key == self._trusted

    def trust(self, key: FolderKey | None) -> None:
        """The files were found to be ours after `look` returned `key`."""
        if key is not None:
            self._trusted = key
