"""A progress bar for a batch being waited on in a cell (`batch.wait()` or `await batch`).

The cell is blocked while it waits, so the bar is moved by the engine's feed thread, like tqdm's
notebook bar is moved by the loop that iterates. Outside a Jupyter kernel this is a no-op and
imports no widgets, so a script's `batch.wait()` stays as cheap as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .._context import current_scope
from .display import in_widget_kernel, show

if TYPE_CHECKING:
    from .._engine import Engine


@contextmanager
def batch_progress(engine: Engine, batch_id: str, run_ids: list[str]) -> Iterator[None]:
    """Show a bar for the duration of the `with` block, when there is a frontend to show it."""
    if not run_ids or not in_widget_kernel() or current_scope() is not None \
            or engine.runtime.in_loop():  # a run awaiting its batch has no cell to draw in
        yield
        return
    from .status_line import BatchProgress

    bar = BatchProgress(engine, batch_id, run_ids)
    show(bar)
    ok = False
    try:
        yield
        ok = True
    finally:
        bar.finish(ok)
