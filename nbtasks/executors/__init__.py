"""Executors: where attempts run.

`InlineExecutor` (the `kernel` machine) ships in the core. `ProcessExecutor` (machine presets in
warm worker processes) and `DaskExecutor` (presets on a Dask cluster, `pip install
nbtasks[dask]`) are imported when first used, so `import nbtasks` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import Executor
from .inline import InlineExecutor

if TYPE_CHECKING:
    from .dask import DaskExecutor
    from .process import ProcessExecutor


def __getattr__(name: str) -> Any:
    if name == "ProcessExecutor":
        from .process import ProcessExecutor

        return ProcessExecutor
    if name == "DaskExecutor":
        from .dask import DaskExecutor

        return DaskExecutor
    raise AttributeError(f"module 'nbtasks.executors' has no attribute {name!r}")


__all__ = ("DaskExecutor", "Executor", "InlineExecutor", "ProcessExecutor")
