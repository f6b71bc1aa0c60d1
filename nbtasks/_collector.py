"""Keeps CPython's full garbage collections short while an engine runs a burst of runs.

Why: the collector of CPython before 3.14 is not incremental. A full collection walks every
container the process holds (the kernel, pandas, the notebook's own data) in one go, holding
the GIL: 20 ms in a bare process, 50 to 100 in a notebook, during which the engine loop, its
timers, every other run and every widget stand still. A burst of thousands of runs makes
enough surviving objects (the handles a cell keeps, the runs in flight) to set one off, often
several. So while an engine has a burst in flight (`BURST_RUNS` runs or more), what existed
before the burst is moved out of the collector's sight (`gc.freeze()`), and so is what the
burst made, every `REFREEZE_RUNS` finished runs (after a young collection, so short-lived
cycles are freed first): a full collection then walks at most one slice's objects. When the
last engine in a burst goes idle or closes, or after `MAX_FROZEN` seconds of one long burst,
everything is given back (`gc.unfreeze()`) and collected as usual from then on.

The cost: a reference cycle among frozen objects that becomes garbage during the burst is
freed only after the thaw (objects without cycles are freed at once, by their reference
counts, frozen or not). After a thaw forced by `MAX_FROZEN` nothing is frozen again until the
collector has made a full pass, so a process that is never idle still has its cycles freed.

Left alone: a process where someone else has frozen objects (`gc.get_freeze_count()` above
zero when a burst starts), or has turned the collector off; and every engine made with
`gc_freeze=False`. One instance, `COLLECTOR`, serves every engine of the process, since the
collector's state is the process's.
"""

from __future__ import annotations

import gc
import os
import threading

#: Runs in flight (in an engine's active set) at which a burst begins.
BURST_RUNS = 1_000
#: Finished runs between two freezes of what the burst made.
REFREEZE_RUNS = 2_000
#: Seconds one burst may keep objects frozen before they are given back.
MAX_FROZEN = 60.0


def _full_collections() -> int:
    return int(gc.get_stats()[-1]["collections"])


class BurstCollector:
    """The process's freeze, shared by the engines in a burst (each a hashable `owner`).

    Called on each engine's own loop thread; the lock only guards the transitions, which
    happen a few times per burst, never once per run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[object] = set()
        self._frozen = False  # the permanent generation is ours
        self._frozen_at = 0.0
        #: After a thaw forced by MAX_FROZEN: no freeze until this many full collections.
        self._thawed_at_pass: int | None = None

    @property
    def frozen(self) -> bool:
        return self._frozen

    def enter(self, owner: object, now: float) -> None:
        """`owner` has a burst in flight: freeze what exists, unless that is not ours to do."""
        with self._lock:
            self._busy.add(owner)
            if not self._frozen:
                self._freeze(now)

    def step(self, owner: object, now: float) -> None:
        """`owner`'s burst finished another REFREEZE_RUNS runs: freeze what the slice made."""
        with self._lock:
            if owner not in self._busy:
                return
            if not self._frozen:
                self._freeze(now)
            elif now - self._frozen_at >= MAX_FROZEN:
                self._thaw()
                self._thawed_at_pass = _full_collections()
            else:
                gc.collect(1)  # the slice's short-lived cycles go now, not at the thaw
                gc.freeze()

    def leave(self, owner: object) -> None:
        """`owner` is idle (or closed): the last to leave gives everything back."""
        with self._lock:
            self._busy.discard(owner)
            if not self._busy and self._frozen:
                self._thaw()

    def _freeze(self, now: float) -> None:
        if not gc.isenabled() or gc.get_freeze_count():
            return  # the process manages its collector itself
        if self._thawed_at_pass is not None:
            if _full_collections() <= self._thawed_at_pass:
                return  # cycles frozen by the last burst are not freed yet
            self._thawed_at_pass = None
        gc.freeze()
        self._frozen, self._frozen_at = True, now

    def _thaw(self) -> None:
        gc.unfreeze()
        self._frozen = False

    def _after_fork(self) -> None:
        """In a child made by `os.fork()`: none of the parent's engines run here, and what the
        parent froze stays frozen (shared with it, page for page), as someone else's."""
        self._lock = threading.Lock()
        self._busy = set()
        self._frozen = False
        self._thawed_at_pass = None


COLLECTOR = BurstCollector()
os.register_at_fork(after_in_child=COLLECTOR._after_fork)
