"""Helpers for testing code that uses nbtasks: a clock you move by hand.

>>> from nbtasks.testing import ManualClock
>>> clock = ManualClock()
>>> eng = nbtasks.Engine(store=":memory:", clock=clock)       # doctest: +SKIP
>>> handle = task.trigger(payload, delay="1h"); clock.advance(3600)
"""

from __future__ import annotations

from ._clock import ManualClock, RealClock

__all__ = ("ManualClock", "RealClock")
