"""Queues, concurrency keys and the order runs start in.

A queue has a `limit` that each concurrency key gets a copy of, an optional
`total` across its keys, and a paused flag. The engine has one more limit over everything.
Ready items wait in one heap per (queue, key); a global heap holds each sub-queue's head, so a
free slot always goes to the oldest eligible run in O(log n), and a sub-queue at its limit never
blocks the others.

Order: retries and resumes (class 0) before fresh runs (class 1), then by queue time minus the
trigger's `priority` seconds, then by trigger sequence.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SortKey = tuple[int, float, int]


@dataclass(eq=False, slots=True)
class SubQueue:
    queue: Queue
    key: str | None
    heap: list[tuple[SortKey, Any]] = field(default_factory=list)
    running: int = 0

    def eligible(self) -> bool:
        q = self.queue
        if q.paused:
            return False
        if q.limit is not None and self.running >= q.limit:
            return False
        return q.total is None or q.running < q.total


@dataclass(eq=False, slots=True)
class Queue:
    name: str
    limit: int | None = None
    total: int | None = None
    paused: bool = False
    running: int = 0
    subs: dict[str | None, SubQueue] = field(default_factory=dict)
    peak: int = 0
    peak_per_key: int = 0
    defined: int | None = None  # the limit the code gave; `limit` differs while overridden
    overridden: bool = False

    def sub(self, key: str | None) -> SubQueue:
        sq = self.subs.get(key)
        if sq is None:
            sq = self.subs[key] = SubQueue(self, key)
        return sq

    @property
    def queued(self) -> int:
        return sum(len(sq.heap) for sq in self.subs.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "concurrency_limit": self.limit,
            "defined_limit": self.defined,
            "overridden": self.overridden,
            "total": self.total,
            "paused": self.paused,
            "running": self.running,
            "queued": self.queued,
            "keys": {
                k: {"running": sq.running, "queued": len(sq.heap)}
                for k, sq in self.subs.items() if k is not None and (sq.running or sq.heap)
            },
            "peak": self.peak,
            "peak_per_key": self.peak_per_key,
        }


class Dispatcher:
    """Hands out slots. All methods run on the engine loop; nothing here awaits."""

    def __init__(self, limit: int, start: Callable[[Any], None]) -> None:
        self.limit = limit
        #: Called with an item once it holds a slot. One callback for all items, not one
        #: closure per queued item: a burst of 20,000 queued runs made 60,000 more objects
        #: for the garbage collector to walk on every full collection.
        self.start = start
        self.running = 0
        self.queues: dict[str, Queue] = {}
        self._ready: list[tuple[SortKey, int, SubQueue]] = []
        self._seq = itertools.count()

    def queue(self, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = Queue(name)
        return q

    def configure(self, name: str, limit: int | None, total: int | None) -> Queue:
        """Set a queue's limits (the newest definition wins, as a redefined task's does, except
        over a runtime override, which holds until `override(name, None, on=False)`)."""
        q = self.queue(name)
        q.defined = limit
        if q.overridden:
            limit = q.limit
        changed = (q.limit, q.total) != (limit, total)
        q.limit, q.total = limit, total
        if changed:
            self._offer_all(q)
            self.pump()  # a raised limit starts what was waiting (a 0-limit queue resumes)
        return q

    def override(self, name: str, limit: int | None, on: bool = True) -> Queue:
        """Set a runtime limit that outranks the defined one (or drop it, back to the defined)."""
        q = self.queue(name)
        defined, q.overridden = q.defined, False
        self.configure(name, limit if on else defined, q.total)
        q.defined, q.overridden = defined, on
        return q

    def push(self, queue: str, key: str | None, sort: SortKey, item: Any) -> None:
        """Queue `item`; `start(item)` is called with a slot held once its turn comes."""
        q = self.queues.get(queue) or self.queue(queue)
        sq = q.subs.get(key) or q.sub(key)
        if not sq.heap and self.running < self.limit and sq.eligible():
            # Nothing eligible is waiting (pump leaves only blocked entries while slots are
            # free), so this item is next anyway: skip both heaps.
            self._take(sq, item)
            return
        heapq.heappush(sq.heap, (sort, item))
        if sq.heap[0][0] is sort:
            heapq.heappush(self._ready, (sort, next(self._seq), sq))
        self.pump()

    def remove(self, queue: str, key: str | None, item: Any) -> bool:
        """Take a queued item out (cancel, expiry). O(n) in its sub-queue, which is rare."""
        q = self.queues.get(queue)
        sq = q.subs.get(key) if q else None
        if sq is None:
            return False
        for i, (_, queued) in enumerate(sq.heap):
            if queued is item:
                sq.heap.pop(i)
                heapq.heapify(sq.heap)
                self._offer(sq)
                self._forget(sq)
                return True
        return False

    def release(self, queue: str, key: str | None) -> None:
        """Give back a slot taken by a started item; the next eligible item starts at once."""
        q = self.queues[queue]
        sq = q.subs[key]
        sq.running -= 1
        q.running -= 1
        engine_was_full = self.running >= self.limit
        self.running -= 1
        if q.total is None and not engine_was_full:
            # Only this sub-queue can have become eligible: pump leaves nothing eligible
            # waiting while slots are free, and no other sub-queue's limit moved. So the slot
            # goes straight to its head, with no trip through the global heap.
            if not sq.heap:
                self._forget(sq)
            elif sq.eligible():
                _, item = heapq.heappop(sq.heap)
                self._take(sq, item)
                if sq.heap and sq.eligible():  # no per-key limit: the next may start too
                    self._offer(sq)
                    self.pump()
            return
        if q.total is not None:
            self._offer_all(q)
        else:
            self._offer(sq)
        self._forget(sq)
        self.pump()

    def pause(self, name: str, paused: bool) -> None:
        q = self.queue(name)
        q.paused = paused
        if not paused:
            self._offer_all(q)
            self.pump()

    def _forget(self, sq: SubQueue) -> None:
        """Drop an idle sub-queue: keys and trigger-time queues would otherwise pile up for the
        kernel's life. A stale entry left in `_ready` is skipped by pump (its heap is empty)."""
        q = sq.queue
        if not sq.heap and not sq.running and q.subs.get(sq.key) is sq:
            del q.subs[sq.key]

    def _offer(self, sq: SubQueue) -> None:
        if sq.heap:
            heapq.heappush(self._ready, (sq.heap[0][0], next(self._seq), sq))

    def _offer_all(self, q: Queue) -> None:
        for sq in q.subs.values():
            self._offer(sq)

    def pump(self) -> None:
        ready = self._ready
        while ready and self.running < self.limit:
            sort, _, sq = heapq.heappop(ready)
            if not sq.heap or sq.heap[0][0] != sort or not sq.eligible():
                continue  # stale entry, or blocked: re-offered when a slot frees
            _, item = heapq.heappop(sq.heap)
            if sq.heap:
                heapq.heappush(ready, (sq.heap[0][0], next(self._seq), sq))
            self._take(sq, item)

    def _take(self, sq: SubQueue, item: Any) -> None:
        q = sq.queue
        sq.running += 1
        q.running += 1
        self.running += 1
        if q.running > q.peak:
            q.peak = q.running
        if sq.running > q.peak_per_key:
            q.peak_per_key = sq.running
        self.start(item)
