"""Reading the history through ADBC into Arrow columns: the `arrow` extra (`pip install nbtasks[arrow]`).

The stdlib driver makes one Python object per value, and with a large history that is where
nearly all of a DataFrame's time goes. The ADBC SQLite driver steps the same query in C and
fills Arrow buffers directly, so text, numbers and NULLs never become Python objects; pandas
then takes the columns with few or no copies. frames.py uses this module when it can be
imported and falls back to the stdlib path otherwise: the frames are the same either way.

The only module that imports pyarrow or ADBC.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    from adbc_driver_manager import Error as AdbcError
    from adbc_driver_sqlite import dbapi
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
    all at once on threads; their results in order.

    The driver steps the query and fills Arrow buffers without the GIL, and that per-value
    work is nearly all of a large frame's cost: queries over disjoint parts of a history run
    on as many cores as there are parts. A lone query runs on the calling thread.

    `busy_timeout` (seconds) is how long a connection waits for a lock, as the store's own do:
    a reader can find the WAL index briefly held (another connection opening, a checkpoint),
    and the driver's default is to fail at once.
    """
    if len(parts) == 1:
        return [_fetch_one(path, busy_timeout, *parts[0])]
    with ThreadPoolExecutor(len(parts), thread_name_prefix="nbtasks-arrow") as pool:
        return list(pool.map(lambda part: _fetch_one(path, busy_timeout, *part), parts))


def _fetch_one(path: str, busy_timeout: float, sql: str, params: Sequence[Any]) -> pa.Table:
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        with dbapi.connect(uri) as conn, conn.cursor() as cur:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": _BATCH_ROWS})
            cur.execute(sql, tuple(params) if params else None)
            return cur.fetch_arrow_table()
    except (AdbcError, OSError) as exc:  # e.g. a column whose type changed after the first batch
        raise Mismatch(str(exc)) from exc


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
