"""Text that SQLite can store: a str holding a lone surrogate can't be encoded as UTF-8.

Such strings are ordinary in Python: `os.fsdecode(b"report-\\xff.csv")` makes one. Where text
enters from inside a run (printed lines, log records, error messages) it is escaped here, so it
stays readable and visibly marked instead of failing the write that carries it.
"""

from __future__ import annotations

from typing import Any


def escape_text(text: str) -> str:
    r"""`text` itself when UTF-8 can hold it; else each lone surrogate spelled out.

    >>> escape_text("report-\udcff.csv")
    'report-\\udcff.csv'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def escape_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A store row with every str escaped (the last resort for a row the store refused)."""
    return tuple(escape_text(v) if isinstance(v, str) else v for v in row)
