"""Executors: where attempts run. `InlineExecutor` ships in the core."""

from ._base import Executor
from .inline import InlineExecutor

__all__ = ("Executor", "InlineExecutor")
