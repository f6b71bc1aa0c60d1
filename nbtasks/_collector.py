"""Puts off CPython's full garbage collections while an engine runs a burst of runs.

Why: the collector of CPython before 3.14 is not incremental. A full collection walks every
container the process holds (the kernel, pandas, the notebook's own data) in one go, holding
the GIL: 15 to 20 ms in a process that has imported nbtasks alone, about 55 ms once ipykernel,
pandas and ipywidgets are in (before any data of the notebook's own), during which the engine
loop, its timers, every other run and every widget stand still. A burst of thousands of runs makes
enough surviving objects (the handles a cell keeps, the runs in flight) to set one off, often
several. So while an engine holds a burst (`BURST_RUNS` runs or more not finished, queued,
running, waiting or delayed, or as many arriving within `CHECK_EVERY` seconds, until fewer
than `QUIET_RUNS` are left in flight and fewer arrive for `IDLE_GRACE` seconds), and while a
coroutine loop commits a burst of gathered `trigger_async` calls, the oldest generation's
threshold is raised out of reach (`gc.set_threshold`):
young collections go on as usual, and so does the reference counting that frees most
objects, but no automatic full collection starts. When the last engine in a burst is quiet
or closes, or once one hold has lasted `MAX_HELD` seconds, the threshold goes back to what
it was and CPython decides, as it always does, when the next full collection is due: the
burst's survivors count towards it as if made at that moment. If one came due during the hold,
it is made then, at the burst's quiet end, rather than left to set off inside the next burst.

The cost: a reference cycle that became garbage and had already reached the oldest
generation is freed after the burst rather than during it, and a full collection that came
due during a hold waits for its end, at most MAX_HELD (plus a check's CHECK_EVERY). After a
release forced by MAX_HELD nothing is put off again until the collector has made a full
pass, so a process that is never quiet still has its cycles freed.

Left alone: a process whose collector is off (`gc.disable()`, or a threshold of 0), or whose
oldest threshold someone else has raised this far already; a change made to the thresholds
during a burst is kept; and every engine made with `defer_gc=False`. One instance,
`COLLECTOR`, serves every engine of the process, since the collector's state is the
process's; it times holds on its own monotonic clock, whatever clock each engine runs on.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable

#: Runs not finished (an engine's active set) at which a burst begins; as many arriving within
#: CHECK_EVERY seconds begin one too, and so do as many `trigger_async` calls gathered in one
#: turn of a coroutine loop (`nbtasks._group_commit`).
BURST_RUNS = 1_000
#: An engine looks at the rate of arrivals every this many runs.
ARRIVALS_STRIDE = 256
#: Fewer runs than this, for IDLE_GRACE seconds, end it: bursts close together are one.
QUIET_RUNS = 100
IDLE_GRACE = 1.0
#: Seconds between two checks on a burst (by its engine's clock).
CHECK_EVERY = 0.5
#: Seconds one burst may put full collections off before they are allowed again.
MAX_HELD = 60.0
#: The oldest generation's threshold during a burst: gen-1 collections it would take to start
#: a full one (one per ~7,000 allocations at the default thresholds), i.e. never in practice.
HELD = 1 << 30


def _full_collections() -> int:
    return int(gc.get_stats()[-1]["collections"])


def _due(oldest_threshold: int) -> bool:
    """A full collection came due during a hold: as many middle-generation passes as the
    oldest generation's own threshold (`oldest_threshold`, the one the hold raised) have been
    made since the last full one. Left to CPython, it would run at its next look, at the next
    stretch of allocation: the start of the next burst, most often (measured: a 14-29 ms
    collection inside the next 20,000-run burst, where the ones left are 2-3 ms). Made at the
    burst's quiet end instead, it costs the same, once, where nothing waits for the loop."""
    return gc.get_count()[2] >= oldest_threshold


class BurstCollector:
    """The process's put-off, shared by the engines in a burst (each a hashable `owner`).

    Called on each engine's own loop thread (and from `Engine.close`); the lock only guards
    the transitions, which happen a few times per burst, never once per run.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._busy: set[object] = set()
        #: The oldest generation's threshold before the burst raised it; None when not raised.
        self._saved: int | None = None
        self._held_at = 0.0
        #: After a release forced by MAX_HELD: no new hold until this many full collections.
        self._released_at_pass: int | None = None

    @property
    def holding(self) -> bool:
        """Automatic full collections are put off now, by a burst."""
        return self._saved is not None

    def enter(self, owner: object) -> None:
        """`owner` has a burst in flight: put full collections off, unless that is not ours."""
        with self._lock:
            self._busy.add(owner)
            if self._saved is None:
                self._hold()

    def step(self, owner: object) -> None:
        """`owner`'s burst goes on: release a hold kept MAX_HELD, or hold again once a full
        collection has been made since the last release."""
        with self._lock:
            if owner not in self._busy:
                return
            if self._saved is None:
                self._hold()
            elif self.clock() - self._held_at >= MAX_HELD:
                self._release()
                self._released_at_pass = _full_collections()

    def leave(self, owner: object) -> None:
        """`owner` is idle (or closed): the last to leave gives the collector back, and makes
        now the full collection the burst put off, if one came due (`_due`)."""
        with self._lock:
            self._busy.discard(owner)
            due = False
            if not self._busy and self._saved is not None:
                due = _due(self._saved)
                self._release()
        if due:
            gc.collect()

    def _hold(self) -> None:
        young, middle, oldest = gc.get_threshold()
        if not gc.isenabled() or young == 0 or oldest >= HELD:
            return  # off, or managed by somebody else
        if self._released_at_pass is not None:
            if _full_collections() <= self._released_at_pass:
                return  # what the last burst put off is not collected yet
            self._released_at_pass = None
        gc.set_threshold(young, middle, HELD)
        self._saved, self._held_at = oldest, self.clock()

    def _release(self) -> None:
        saved, self._saved = self._saved, None
        young, middle, oldest = gc.get_threshold()
        if saved is not None and oldest == HELD:  # unless changed meanwhile: then theirs stays
            gc.set_threshold(young, middle, saved)

    def _after_fork(self) -> None:
        """In a child made by `os.fork()`: none of the parent's engines run here, so it is in
        no burst, and the threshold the parent raised goes back."""
        self._lock = threading.Lock()
        self._busy = set()
        self._released_at_pass = None
        self._release()


COLLECTOR = BurstCollector()
os.register_at_fork(after_in_child=COLLECTOR._after_fork)
