"""Reading the history through ADBC into Arrow columns: the `arrow` extra (`pip install nbtasks[arrow]`).

The stdlib driver makes one Python object per value, and with a large history that is where
nearly all of a DataFrame's time goes. The ADBC SQLite driver steps the same query in C and
fills Arrow buffers directly, so text, numbers and NULLs never become Python objects; pandas
then takes the columns with few or no copies. frames.py uses this module when it can be
imported and falls back to the stdlib path otherwise: the frames are the same either way.

The driver runs in a reader process of its own (_arrow_reader says why: its SQLite and the
store's must not share a process), which hands the tables back as Arrow IPC files in shared
memory, read here in one pass and unlinked.
With _arrow_reader, the only module that imports pyarrow or ADBC; importing the driver's
Python package here only checks the extra is installed, its library loads in the reader.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    import adbc_driver_sqlite  # noqa: F401 - used by the reader process
    import pyarrow as pa
    import pyarrow.compute as pc
except ImportError:  # the extra is not installed: frames.py takes the stdlib path
    AVAILABLE = False
else:
    AVAILABLE = True

#: The driver infers each column's type from the first batch. One large batch makes a column
#: that is NULL in its first rows (and typed later) rare; `Mismatch` covers the rest.
_BATCH_ROWS = str(1 << 20)
#: pandas' own text dtype (Arrow-backed when pyarrow is installed), as the stdlib path makes it.
_STR = pd.array([], dtype="str").dtype


class Mismatch(Exception):
    """The driver could not give a column the type it needs: read this query the stdlib way."""


def fetch(path: str, parts: Sequence[tuple[str, Sequence[Any]]], *,
          busy_timeout: float = 30.0) -> list[pa.Table]:
    """Run each (sql, params) on its own read-only connection to the SQLite file at `path`,
    all at once on threads of the reader process (see _arrow_reader); their results in order.

    The driver steps the query and fills Arrow buffers without the GIL, and that per-value
    work is nearly all of a large frame's cost: queries over disjoint parts of a history run
    on as many cores as there are parts. `busy_timeout` (seconds) is how long a connection
    waits for a lock, as the store's own do.
    """
    request = json.dumps({"path": str(Path(path).resolve()), "busy_timeout": busy_timeout,
                          "batch_rows": _BATCH_ROWS,
                          "parts": [[sql, list(params)] for sql, params in parts]})
    with _lock:
        reader = _reader()
        assert reader.stdin is not None and reader.stdout is not None
        try:
            reader.stdin.write(request.encode() + b"\n")
            reader.stdin.flush()
            line = reader.stdout.readline()
            if not line:
                raise OSError("the reader process ended mid-answer")
            answer = json.loads(line)
            if "error" in answer:
                raise Mismatch(answer["error"])
            return [_take(name) for name in answer["files"]]
        except (OSError, ValueError) as exc:  # it died (killed, out of memory): a new one next
            _stop()
            raise Mismatch(f"the Arrow reader process failed: {exc!r}") from exc


def _take(name: str) -> pa.Table:
    """The table in the reader's file `name`, read into the kernel's memory; the file is unlinked
    at once. Read, not memory-mapped: a mapped table's columns (text columns stay Arrow-backed
    in the frame, `attempts_arrow()` is the table itself) would hold their pages of shared
    memory for as long as the user keeps them, and /dev/shm is often small (64 MiB in a Docker
    container) and needed by others (PyTorch's data loaders). The one copy of a 140 MB frame
    costs 0.04-0.5 s of CPU, the most when the process must first take that memory from the
    system."""
    try:
        with pa.OSFile(name, "rb") as source:
            return pa.ipc.open_file(source).read_all()
    finally:
        os.unlink(name)


_lock = threading.Lock()
_process: subprocess.Popen[bytes] | None = None


def _reader() -> subprocess.Popen[bytes]:
    """The reader process, started on first use and kept: it costs an interpreter start."""
    global _process
    if _process is not None and _process.poll() is not None:  # it died since: let it go
        _stop()
    if _process is None:
        script = Path(__file__).with_name("_arrow_reader.py")
        _process = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
    return _process


@atexit.register
def _stop() -> None:
    """End the reader: closing its stdin is its signal, as it is when the kernel dies."""
    global _process
    process, _process = _process, None
    if process is None:
        return
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - stuck in the driver
        process.kill()
        process.wait()


#: A query's result, read in parts (see fetch).
Parts = Sequence["pa.Table"]


def _typed(col: pa.ChunkedArray, want: pa.DataType) -> pa.ChunkedArray:
    """`col` as `want`. A column with no value at all comes back typed int64 (nothing to infer
    from): that is all NULLs of the wanted type. Any other surprise goes the stdlib way."""
    if col.type == want:
        return col
    if col.null_count == len(col):
        return pa.chunked_array([pa.nulls(len(col), want)])
    if pa.types.is_integer(col.type) and pa.types.is_floating(want):
        return col.cast(want)
    raise Mismatch(f"column of type {col.type}, wanted {want}")


def _column(parts: Parts, i: int, want: pa.DataType) -> pa.ChunkedArray:
    """Column `i` of every part as one column of type `want`: each part typed its columns
    from its own rows (see _typed)."""
    chunks = [chunk for t in parts for chunk in _typed(t.column(i), want).chunks]
    return pa.chunked_array(chunks, type=want)


def floats(parts: Parts, i: int) -> np.ndarray[Any, Any]:
    """float64, NaN for NULL (timestamps and durations)."""
    return _column(parts, i, pa.float64()).to_numpy()  # type: ignore[no-any-return]


def ints(parts: Parts, i: int) -> np.ndarray[Any, Any]:
    col = _column(parts, i, pa.int64())
    if col.null_count:
        raise Mismatch("NULL in an integer column")
    return col.to_numpy()  # type: ignore[no-any-return]


def strings(parts: Parts, i: int) -> Any:
    """pandas' str dtype, NaN for NULL: the stdlib path's dtype, without Python objects."""
    return _column(parts, i, pa.string()).to_pandas(types_mapper={pa.string(): _STR}.get).array


def factorize(parts: Parts, i: int) -> tuple[np.ndarray[Any, Any], list[str]]:
    """(codes, distinct values): code -1 for NULL, like pandas.factorize."""
    encoded = pc.dictionary_encode(_column(parts, i, pa.string()).combine_chunks())
    codes = encoded.indices.fill_null(-1).to_numpy().astype("int64", copy=False)
    return codes, encoded.dictionary.to_pylist()


def from_frame(df: pd.DataFrame) -> pa.Table:
    """A frame as an Arrow table: categoricals become dictionaries, tags lists of strings."""
    if not AVAILABLE:
        raise ImportError("Arrow tables of the history need pyarrow and the ADBC SQLite driver: "
                          "pip install nbtasks[arrow]")
    return pa.Table.from_pandas(df, preserve_index=False)
