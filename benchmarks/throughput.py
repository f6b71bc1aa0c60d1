"""Throughput of the hot path, each figure a ratio to a baseline measured in the same run.

    python benchmarks/throughput.py                    # every target, N = 20,000 (~3 min)
    python benchmarks/throughput.py -n 5000 --repeat 2
    python benchmarks/throughput.py --only paths,wait,stall
    python benchmarks/throughput.py --only big --big-runs 1000000
    python benchmarks/throughput.py --only lock --loop-n 5000   # where the loop's time goes

Baselines: bare asyncio (create_task + gather of N no-op coroutines), and a bare stdlib
`sqlite3` loop committing one row per transaction in WAL with synchronous=NORMAL: the physical
limit of a durable `trigger()`, which returns only once its run is committed. Beside it, the same
loop into nbtasks' own runs table shows what the table's indexes cost on their own.

Sections (`--only`):
  paths     `trigger()` loop ÷ bare one-row commit; `batch_trigger` x500 + wait ÷ bare asyncio;
            `trigger_async` + gather ÷ the batch time
  wait      `handle.wait()` on a run already finished: first call per handle, and again
  stall     the longest stall of the engine loop during an N-run burst, seen by a probe timer
            on that loop (a 1 ms heartbeat recording how late it fires); beside it the longest
            garbage collection in that burst, the same burst with the collector paused, and
            with the engine's burst policy for the collector off (`defer_gc=False`)
  gc        the CPU time each trigger style spends in garbage collections, per run, and the
            number of full collections (the oldest generation) it set off, with the engine's
            burst policy for the collector and with `defer_gc=False`
  neighbour the `paths` ratios again with a CPU-burning neighbour process, ÷ the ratios without
  big      per-run `trigger()` cost on a store already holding --big-runs runs ÷ an empty store
            (the big store is filled once, by direct SQL inserts of valid rows, in a temp dir)
  lock      where a `trigger()` loop's time goes (no target): per run, how long the cell's
            thread holds the intake's lock (its insert into the intake file) and waits for it
            (the writer taking rows to fold, or deleting folded ones), and how long the writer
            holds the store's write lock (its commits into the store's own file); then the same
            for an N-run batch burst, whose cell and writer take turns at the store's lock,
            beside the engine thread's CPU. Not part of the default run.
  design    what two other designs would give (no target; not part of the default run): the
            SQLite a batch run needs, on a thread beside another running Python, ÷ alone, and
            the work both threads do ÷ one thread doing it in turn (threads can't overlap SQLite
            with the engine's Python: sqlite3 takes the GIL back after every statement); and
            the batch with its commits made by a child process (`child_writer.py`, a sketch
            with none of the failure handling a store needs): wall, the kernel's CPU and the
            child's, and what that CPU allows at best, pipelined perfectly, with two cores
            (side by side) and with one (in turn, as with a CPU-burning neighbour)

Beside the batch, the `paths` section times the SQLite statements a no-op batch run needs on
their own (its row's insert with its batch, its final row and its attempt's row, with the
store's own statements and rows built beforehand): SQLite writes one transaction at a time per
file, so this is a floor under the batch's time that no threading can lower.

Beside each wall-clock figure the `paths` section prints the process's CPU time per run (all
threads; for the `trigger()` loop, the loop and the runs it started, up to their end) and the
same ratios in CPU time. On a machine shared with other work the wall clock measures mostly
how often the scheduler let the process run; CPU time barely moves with the load, so those
ratios are the ones to compare across runs.

Only the public API is used, plus the probe, which reads the engine's loop (`eng.runtime.loop`),
and the `lock` section, which times the SQLite store's two locks (`eng.store._lock`, and
`eng.store._intake._lock`) and reads the engine thread's CPU time on its loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import nbtasks
from nbtasks.stores import Store

SECTIONS = ("paths", "wait", "stall", "gc", "neighbour", "big", "lock", "design")


# ---------------------------------------------------------------- baselines


async def _bare(n: int) -> None:
    async def noop(i: int) -> None:
        return None

    await asyncio.gather(*(asyncio.create_task(noop(i)) for i in range(n)))


class _Awaits:
    """Stands in for a run handle: awaiting it awaits its future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future

    def __await__(self) -> Iterator[None]:
        yield from self.future.__await__()


async def _gather_shape(n: int) -> None:
    """What `trigger_async` + gather asks of asyncio itself, with nothing behind it: `n`
    gathered calls, each waiting for a future that one callback resolves for the whole turn
    (as the group commit does) and returning an awaitable; then a gather of those, each
    waiting for a future resolved the same way (as the await group does)."""
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[None]] = []

    def resolve_all() -> None:
        ready = pending[:]
        pending.clear()
        for fut in ready:
            fut.set_result(None)

    def later() -> asyncio.Future[None]:
        fut = loop.create_future()
        pending.append(fut)
        if len(pending) == 1:
            loop.call_soon(resolve_all)
        return fut

    async def call(i: int) -> _Awaits:
        await later()
        return _Awaits(later())

    handles = await asyncio.gather(*(call(i) for i in range(n)))
    await asyncio.gather(*handles)


def bare_gather_shape(n: int) -> Timing:
    out: list[float] = []
    with _clocks(out):
        asyncio.run(_gather_shape(n))
    return out[0], out[1]


#: (wall seconds, process CPU seconds) of one measurement.
Timing = tuple[float, float]


@contextmanager
def _clocks(into: list[float]) -> Iterator[None]:
    """Wall and process CPU seconds of the block, appended to `into`."""
    t, c = time.perf_counter(), time.process_time()
    yield
    into += [time.perf_counter() - t, time.process_time() - c]


def bare_asyncio(n: int) -> Timing:
    out: list[float] = []
    with _clocks(out):
        asyncio.run(_bare(n))
    return out[0], out[1]


def bare_commits(n: int, path: str) -> Timing:
    """Seconds for `n` one-row transactions: WAL, synchronous=NORMAL, stdlib sqlite3."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute("CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, task_id TEXT, "
                    "status TEXT, payload TEXT, created_at REAL)")
        return _one_row_commits(con, n, "INSERT INTO runs VALUES (?, 'noop', 'QUEUED', ?, ?)",
                                lambda i, now: (f"run_{i:021d}", str(i), now))
    finally:
        con.close()


def _one_row_commits(con: sqlite3.Connection, n: int, sql: str,
                     row: Callable[[int, float], tuple[object, ...]]) -> Timing:
    """Seconds for `n` transactions of one `sql` INSERT each, of `row(i, time.time())`."""
    out: list[float] = []
    with _clocks(out):
        for i in range(n):
            values = row(i, time.time())
            con.execute("BEGIN IMMEDIATE")
            con.execute(sql, values)
            con.execute("COMMIT")
    return out[0], out[1]


def schema_commits(n: int, path: str) -> Timing:
    """The same one-row transactions into nbtasks' own runs table, with its indexes: how much of
    the `trigger()` loop's ratio the schema itself costs (each index is a B-tree to update)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    nbtasks.Engine(store=path).close()  # the schema, as the engine makes it
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous = NORMAL")
        sql = ("INSERT INTO runs (id, task_id, status, payload, attempt_count, created_at, "
               "updated_at, queued_at, is_test, queue, priority, owner, seq) "
               "VALUES (?, 'noop', 'QUEUED', ?, 0, ?, ?, ?, 0, 'task/noop', 0.0, 'eng', ?)")
        return _one_row_commits(con, n, sql,
                                lambda i, now: (f"run_{i:021d}", str(i), now, now, now, i))
    finally:
        con.close()


def batch_sql(n: int, path: str) -> Timing:
    """Seconds for the SQLite statements `n` no-op batch runs need, alone, 500 at a time: the
    insert of the batch's new rows (one transaction, as `batch_trigger` commits it), then each
    run's final state (the columns that changed since the insert, as the writer writes them)
    and its attempt's row (one transaction, as the writer commits them). The
    rows are built beforehand: what is timed is SQLite's work, the part of a batch run that
    one file's single writer does one transaction at a time, whatever the threads around it.

    Uses the store's own statements (`nbtasks.stores.sqlite`, internal) on a store made by
    the engine, so the figure moves with the schema."""
    write = _batch_sql(n, path)
    out: list[float] = []
    with _clocks(out):
        write()
    return out[0], out[1]


def _batch_sql(n: int, path: str) -> Callable[[], None]:
    """`batch_sql`'s statements, ready to run once: a new store at `path`, its rows built."""
    from nbtasks._runstate import AttemptState, RunState, new_id
    from nbtasks._status import RunStatus
    from nbtasks.stores import sqlite as store

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    nbtasks.Engine(store=path).close()
    now = time.time()
    fresh, final, attempts = [], [], []
    for i in range(n):
        run = RunState(new_id("run_"), "noop", str(i), now)
        run.batch_id, run.owner, run.seq = "batch_" + str(i // 500), "eng", i
        fresh.append(run.row())
        attempt = AttemptState(1, now, "kernel", run.queue)
        attempt.finished_at, attempt.status = now, "COMPLETED"
        attempts.append(attempt.row(run.id))
        run.status, run.attempt_count, run.output_json = RunStatus.COMPLETED, 1, "null"
        run.started_at = run.finished_at = run.updated_at = now
        final.append(run.row())

    def write() -> None:
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("PRAGMA synchronous = NORMAL")
            for i in range(0, n, 500):
                con.execute("BEGIN IMMEDIATE")
                store._insert_fresh(con, fresh[i:i + 500])
                con.execute("COMMIT")
                con.execute("BEGIN IMMEDIATE")
                store._update_stored(con, final[i:i + 500], fresh[i:i + 500])
                store._insert_attempts(con, attempts[i:i + 500])
                con.execute("COMMIT")
        finally:
            con.close()

    return write


def _python_work() -> int:
    """A slice of pure-Python work (as the engine loop's is), about a millisecond here."""
    total = 0
    for i in range(20_000):
        total += i & 7
    return total


def sqlite_beside_python(n: int, path: str, seconds: float = 0.5) -> tuple[float, float]:
    """What two threads get done when one runs `batch_sql`'s statements and the other pure
    Python, as the writer's and the engine loop's do in a burst. Returns (the statements' time
    beside the Python ÷ alone; the work both threads did together ÷ the time one thread takes
    to do the same work in turn). The second is 2 if the threads overlapped fully and 1 if a
    second thread gained nothing: sqlite3 lets the GIL go while SQLite works, but takes it back
    after every statement, and waits for the busy thread to give it up (up to the switch
    interval, 5 ms) while SQLite stands idle."""
    done = threading.Event()
    slices = [0]

    def python() -> None:
        while not done.is_set():
            _python_work()
            slices[0] += 1

    t = time.perf_counter()  # the Python's pace alone, on the calling thread
    alone_slices = 0
    while time.perf_counter() - t < seconds:
        _python_work()
        alone_slices += 1
    per_slice = (time.perf_counter() - t) / alone_slices
    sql_alone = batch_sql(n, path + "-alone")[0]
    write = _batch_sql(n, path)
    spinner = threading.Thread(target=python)
    spinner.start()
    try:
        time.sleep(0.05)
        before = slices[0]
        t = time.perf_counter()
        write()
        beside = time.perf_counter() - t
        python_done = slices[0] - before
    finally:
        done.set()
        spinner.join()
    return beside / sql_alone, (sql_alone + python_done * per_slice) / beside


def nb_batch_child(n: int, path: str) -> tuple[float, float, float]:
    """`nb_batch` on a store whose commits a child process makes (`child_writer`, a sketch):
    wall seconds, the kernel's CPU seconds, and the child's CPU seconds in that time."""
    from child_writer import ChildWriterStore

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    store = ChildWriterStore(path)
    child: list[float] = []

    def body(task: nbtasks.Task[int, None]) -> None:
        child.append(store.child_cpu())  # two exchanges: a tenth of a millisecond in a second
        _batch_body(n)(task)
        child.append(store.child_cpu())

    wall, kernel = _timed(path, body, store=store)
    return wall, kernel, child[1] - child[0]


@contextmanager
def cpu_neighbour() -> Iterator[None]:
    """A process that burns one CPU for as long as the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let it get scheduled before timing starts
        yield
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- nbtasks paths


def _engine(path: str, defer_gc: bool = True, store: Store | None = None
            ) -> tuple[nbtasks.Engine, nbtasks.Task[int, None]]:
    eng = nbtasks.Engine(store=store or path, concurrency_limit=1000, defer_gc=defer_gc)

    async def noop(payload: int, ctx: object) -> None:
        return None

    return eng, eng.task(id="noop", run=noop)


def _timed(path: str, body: Callable[[nbtasks.Task[int, None]], None],
           defer_gc: bool = True, store: Store | None = None) -> Timing:
    """Seconds `body(task)` takes on an engine (start-up and shutdown not counted)."""
    eng, task = _engine(path, defer_gc, store)
    try:
        out: list[float] = []
        with _clocks(out):
            body(task)
        return out[0], out[1]
    finally:
        eng.close()


def _batch_body(n: int) -> Callable[[nbtasks.Task[int, None]], None]:
    def body(task: nbtasks.Task[int, None]) -> None:
        batches = [task.batch_trigger(list(range(i, min(i + 500, n)))) for i in range(0, n, 500)]
        for b in batches:
            assert all(r.ok for r in b.wait())

    return body


def nb_batch(n: int, path: str, defer_gc: bool = True) -> Timing:
    return _timed(path, _batch_body(n), defer_gc)


def nb_async(n: int, path: str, defer_gc: bool = True) -> Timing:
    def body(task: nbtasks.Task[int, None]) -> None:
        async def go() -> None:
            handles = await asyncio.gather(*(task.trigger_async(i) for i in range(n)))
            results = await asyncio.gather(*handles)
            assert all(r.ok for r in results)

        asyncio.run(go())

    return _timed(path, body, defer_gc)


def nb_loop(n: int, path: str, defer_gc: bool = True) -> Timing:
    """Seconds for `n` trigger() calls from a cell (the waits afterwards are not counted), and
    the process CPU seconds of the loop and of the runs it started, up to their end."""
    eng, task = _engine(path, defer_gc)
    try:
        c = time.process_time()
        t = time.perf_counter()
        handles = [task.trigger(i) for i in range(n)]
        secs = time.perf_counter() - t
        # One wait for all: n waits one by one would be counted as the runs' cost.
        results = eng.wait_results([h.id for h in handles])
        cpu = time.process_time() - c
        assert all(r.ok for r in results)
        return secs, cpu
    finally:
        eng.close()


def _per(timing: Timing, n: int) -> Timing:
    return timing[0] / n, timing[1] / n


class Paths:
    """The three trigger styles and their baselines, measured together (so ratios match)."""

    def __init__(self, n: int, loop_n: int, repeat: int, fresh: Callable[[], str]) -> None:
        # Each is (wall, CPU) seconds per run, the best of `repeat` rounds. A round measures
        # every path once, so a baseline and the path divided by it are taken minutes apart
        # at most, not a whole section apart on a machine whose load moves.
        measures: list[tuple[Callable[[], Timing], int]] = [
            (lambda: bare_asyncio(n), n), (lambda: bare_commits(loop_n, fresh()), loop_n),
            (lambda: schema_commits(loop_n, fresh()), loop_n), (lambda: batch_sql(n, fresh()), n),
            (lambda: nb_batch(n, fresh()), n),
            (lambda: nb_async(n, fresh()), n), (lambda: nb_loop(loop_n, fresh()), loop_n),
            (lambda: bare_gather_shape(n), n)]
        rounds = [[fn() for fn, _ in measures] for _ in range(repeat)]
        (self.asyncio, self.commit, self.schema, self.sql, self.batch, self.async_,
         self.loop, self.shape) = (
            _per((min(r[i][0] for r in rounds), min(r[i][1] for r in rounds)), count)
            for i, (_, count) in enumerate(measures))

    def ratios(self, clock: int = 0) -> dict[str, float]:
        """The three target ratios, in wall time (clock 0) or process CPU time (clock 1)."""
        return {"trigger() loop ÷ bare one-row commit": self.loop[clock] / self.commit[clock],
                "batch_trigger x500 + wait ÷ bare asyncio":
                    self.batch[clock] / self.asyncio[clock],
                "trigger_async + gather ÷ batch": self.async_[clock] / self.batch[clock]}


# ---------------------------------------------------------------- wait, stall, big store


def finished_wait(n: int, path: str) -> tuple[float, float]:
    """µs per `handle.wait()` on runs already finished: the first call, then a second one."""
    eng, task = _engine(path)
    try:
        handles = []
        for i in range(0, n, 500):
            batch = task.batch_trigger(list(range(i, min(i + 500, n))))
            batch.wait()  # finished and durable; the handles themselves were never waited on
            handles.extend(batch.runs)
        t = time.perf_counter()
        for h in handles:
            h.wait()
        first = time.perf_counter() - t
        t = time.perf_counter()
        for h in handles:
            h.wait()
        again = time.perf_counter() - t
        return first / n * 1e6, again / n * 1e6
    finally:
        eng.close()


class LoopProbe:
    """A heartbeat timer on the engine loop: how late it fires is how long the loop was held.

    On a busy machine a beat is also late when the engine thread waits for a CPU or for the
    GIL (held by the cell's thread, or by a garbage collection it started): the loop is held
    all the same, but not by the engine's own work. So each beat also reads the engine
    thread's CPU clock, and `worst_cpu` is the longest lateness that CPU spent on that thread
    can account for: the engine's own share of the worst stall.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float = 0.001) -> None:
        self.loop = loop
        self.period = period
        self.worst = 0.0
        self.worst_cpu = 0.0
        self.beats = 0
        self._due = 0.0
        self._cpu = 0.0
        self._stopped = threading.Event()
        self._armed = threading.Event()

    def start(self) -> None:
        self.loop.call_soon_threadsafe(self._arm)
        self._armed.wait(10)

    def _arm(self) -> None:
        self._due = self.loop.time() + self.period
        self._cpu = time.thread_time()
        self.loop.call_at(self._due, self._beat)
        self._armed.set()

    def _beat(self) -> None:
        late = self.loop.time() - self._due
        self.worst = max(self.worst, late)
        self.worst_cpu = max(self.worst_cpu, min(late, time.thread_time() - self._cpu))
        self.beats += 1
        if not self._stopped.is_set():
            self._arm()

    def stop(self) -> float:
        self._stopped.set()
        return self.worst


class GCPauses:
    """The longest garbage collection (any thread, any generation) while it is installed.

    A collection holds the GIL, so it stalls the engine loop wherever it runs; its length
    grows with every object the process holds, the notebook's own included. Timed in the
    collecting thread's CPU time: the callbacks around it are Python code, and the GIL can
    change hands inside them, so their wall clock would count another thread's turn as part
    of the collection."""

    def __init__(self) -> None:
        self.longest = 0.0
        #: CPU seconds and collections, by generation (0, 1, 2: the last a full collection).
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            took = time.thread_time() - self._start
            self.longest = max(self.longest, took)
            self.seconds[info["generation"]] += took
            self.counts[info["generation"]] += 1

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def burst_stall(n: int, path: str, collector: bool = True,
                defer_gc: bool = True) -> tuple[float, float, float, float]:
    """(longest loop stall in ms, its engine-CPU share in ms, longest garbage collection in ms,
    burst seconds) while N runs are batch-triggered and awaited. With `collector=False` the
    garbage collector is paused for the burst: what is left is the engine's own slicing. With
    `defer_gc=False` the engine leaves the collector alone in the burst (see nbtasks._collector):
    a full collection then walks the whole heap."""
    eng, task = _engine(path, defer_gc)
    try:
        probe = LoopProbe(eng.runtime.loop)
        probe.start()
        if not collector:
            gc.disable()
        try:
            with GCPauses() as pauses:
                t = time.perf_counter()
                _batch_body(n)(task)
                secs = time.perf_counter() - t
        finally:
            gc.enable()
        return probe.stop() * 1e3, probe.worst_cpu * 1e3, pauses.longest * 1e3, secs
    finally:
        eng.close()
        gc.collect()


class TimedLock:
    """Stands in for the store's write lock (an RLock) and records, per thread name, the time
    spent waiting for it, and the wall and thread CPU time spent holding it (outermost acquire
    to its release): wall above CPU while holding it is time the holder waited for the GIL, a
    CPU or the disk."""

    def __init__(self, lock: threading.RLock) -> None:
        self._inner = lock
        self._held: dict[int, tuple[int, float, float]] = {}  # thread -> (depth, wall, cpu)
        self.waits: dict[str, list[float]] = {}
        self.holds: dict[str, list[float]] = {}
        self.holds_cpu: dict[str, list[float]] = {}

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        t = time.perf_counter()
        if not self._inner.acquire(blocking, timeout):
            return False
        got, me = time.perf_counter(), threading.get_ident()
        depth, since, cpu = self._held.get(me, (0, got, time.thread_time()))
        if depth == 0:
            self.waits.setdefault(threading.current_thread().name, []).append(got - t)
        self._held[me] = (depth + 1, since, cpu)
        return True

    def release(self) -> None:
        me = threading.get_ident()
        depth, since, cpu = self._held.pop(me)
        if depth > 1:
            self._held[me] = (depth - 1, since, cpu)
        else:
            name = threading.current_thread().name
            self.holds.setdefault(name, []).append(time.perf_counter() - since)
            self.holds_cpu.setdefault(name, []).append(time.thread_time() - cpu)
        self._inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_times(n: int, path: str) -> tuple[float, TimedLock, TimedLock]:
    """A `trigger()` loop of `n` calls with the intake's lock (the cell's commits) and the
    store's write lock (the writer's) timed: (seconds, intake lock, store lock)."""
    eng, task = _engine(path)
    try:
        store_lock = _time_store_lock(eng, task)
        intake = eng.store._intake  # type: ignore[attr-defined]
        cell_lock = TimedLock(intake._lock)
        intake._lock = cell_lock
        t = time.perf_counter()
        handles = [task.trigger(i) for i in range(n)]
        secs = time.perf_counter() - t
        eng.wait_results([h.id for h in handles])
        return secs, cell_lock, store_lock
    finally:
        eng.close()


def batch_lock_times(n: int, path: str) -> tuple[float, TimedLock, float]:
    """`n` runs in batches of 500 (triggered, then waited for) with the store's write lock
    timed, and the engine thread's CPU seconds over the same span: (seconds, lock, engine CPU
    seconds). The cell's batch commits and the writer's commits take turns at that lock."""
    eng, task = _engine(path)
    try:
        store_lock = _time_store_lock(eng, task)
        engine_cpu = eng.runtime.call(_thread_cpu)
        t = time.perf_counter()
        _batch_body(n)(task)
        secs = time.perf_counter() - t
        return secs, store_lock, eng.runtime.call(_thread_cpu) - engine_cpu
    finally:
        eng.close()


def _time_store_lock(eng: nbtasks.Engine, task: nbtasks.Task[int, None]) -> TimedLock:
    """Warm the engine and its writer thread up, then time the store's write lock from here."""
    task.batch_trigger([0]).wait()
    store_lock = TimedLock(eng.store._lock)  # type: ignore[attr-defined]
    eng.store._lock = store_lock  # type: ignore[attr-defined]
    return store_lock


async def _thread_cpu() -> float:
    return time.thread_time()


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


def fill_big(path: str, runs: int) -> float:
    """A store holding `runs` finished runs, inserted by SQL into the engine's own schema."""
    nbtasks.Engine(store=path).close()  # the schema, as the engine makes it
    t = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = DELETE")  # a bulk load: no WAL the size of the table
    con.execute("PRAGMA synchronous = OFF")
    start = time.time() - runs * 0.01 - 3600
    # Generated inside SQLite (a recursive CTE), not row by row from Python: a million rows in
    # seconds. Ids sort by age, as the engine's do.
    con.execute(
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
        "INSERT INTO runs (id, task_id, status, payload, output, attempt_count, created_at, "
        "started_at, finished_at, updated_at, queued_at, tags, metadata, queue, owner, seq) "
        "SELECT printf('run_0hist%016d', i), 'noop', 'COMPLETED', CAST(i AS TEXT), 'null', 1, "
        "? + i * 0.01, ? + i * 0.01 + 0.001, ? + i * 0.01 + 0.002, ? + i * 0.01 + 0.002, "
        "? + i * 0.01, '[]', '{}', 'task/noop', 'eng_0history', i FROM c",
        (runs - 1, start, start, start, start, start))
    con.close()
    return time.perf_counter() - t


# ---------------------------------------------------------------- report


def _table(rows: list[tuple[str, str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'value':>12}  {'target':>8}  {'goal':>8}")
    for name, value, target, goal in rows:
        print(f"{name:{width}}  {value:>12}  {target:>8}  {goal:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000, help="runs per burst (default 20,000)")
    parser.add_argument("--loop-n", type=int, default=2000,
                        help="trigger() calls per loop measurement (default 2,000)")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many (default 2)")
    parser.add_argument("--only", default=",".join(s for s in SECTIONS
                                                     if s not in ("lock", "design")),
                        help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--big-runs", type=int, default=1_000_000)
    args = parser.parse_args()
    only = set(args.only.split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    n, loop_n = args.n, min(args.loop_n, args.n)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10_000))

        def fresh() -> str:
            return os.path.join(tmp, f"s{next(counter)}", "runs.db")

        print(f"N = {n:,} no-op async runs (trigger() loops: {loop_n:,}), SQLite on disk, "
              f"best of {args.repeat}; load average {os.getloadavg()[0]:.2f}", flush=True)
        quiet: Paths | None = None
        if only & {"paths", "neighbour"}:
            quiet = Paths(n, loop_n, args.repeat, fresh)
            for name, (wall, cpu) in (
                    ("bare asyncio", quiet.asyncio),
                    ("bare sqlite3 one-row commit (WAL, NORMAL)", quiet.commit),
                    ("the same commit into nbtasks' runs table (its indexes)", quiet.schema),
                    ("the SQLite a batch run needs, alone (insert, final row, attempt)",
                     quiet.sql),
                    ("trigger() loop", quiet.loop),
                    ("batch_trigger x500 + wait", quiet.batch),
                    ("trigger_async + gather", quiet.async_)):
                rows.append((f"{name}, µs/run (CPU µs/run)",
                             f"{wall * 1e6:.1f} ({cpu * 1e6:.1f})", "", ""))
            for (name, ratio), cpu, target, goal in zip(
                    quiet.ratios().items(), quiet.ratios(1).values(), ("2.5", "5", "1.5"),
                    ("1.5", "3.5", "1.1"), strict=True):
                rows.append((f"{name} (in CPU time)", f"{ratio:.2f} ({cpu:.2f})", f"≤ {target}",
                             f"≤ {goal}"))
            rows.append(("  the batch's SQLite alone ÷ bare asyncio (in CPU time)",
                         f"{quiet.sql[0] / quiet.asyncio[0]:.2f} "
                         f"({quiet.sql[1] / quiet.asyncio[1]:.2f})", "", ""))
            # The gather style pays asyncio for two gathered tasks a run on top of a batch's
            # work, whatever nbtasks does: the faster the batch, the higher this floor.
            rows.append(("  asyncio's own cost of the gather style (two gathers, no runs), µs/run",
                         f"{quiet.shape[0] * 1e6:.1f} ({quiet.shape[1] * 1e6:.1f})", "", ""))
            rows.append(("  that ÷ batch: what it adds to gather ÷ batch, less any hidden by overlap",
                         f"{quiet.shape[0] / quiet.batch[0]:.2f} "
                         f"({quiet.shape[1] / quiet.batch[1]:.2f})", "", ""))
        if "wait" in only:
            first, again = finished_wait(n, fresh())
            rows.append(("handle.wait() on a finished run, first call, µs", f"{first:.2f}",
                         "≤ 5", "≤ 1"))
            rows.append(("handle.wait() on a finished run, again, µs", f"{again:.2f}",
                         "≤ 5", "≤ 1"))
        if "stall" in only:
            worst, own, collection, secs = burst_stall(n, fresh())
            rows.append((f"longest engine-loop stall, {n:,}-run burst ({secs:.1f} s), ms",
                         f"{worst:.1f}", "≤ 20", "≤ 5"))
            rows.append(("  of which the engine thread's own CPU, ms", f"{own:.1f}", "", ""))
            rows.append(("  longest garbage collection in the burst (its thread's CPU), ms",
                         f"{collection:.1f}", "", ""))
            worst, own, _, secs = burst_stall(n, fresh(), collector=False)
            rows.append(("the same burst with the garbage collector paused, ms",
                         f"{worst:.1f}", "≤ 20", "≤ 5"))
            rows.append(("  of which the engine thread's own CPU, ms", f"{own:.1f}", "", ""))
            worst, _, collection, secs = burst_stall(n, fresh(), defer_gc=False)
            rows.append(("the same burst with defer_gc=False (full collections walk the "
                         "whole heap), ms", f"{worst:.1f}", "", ""))
            rows.append(("  longest garbage collection in the burst (its thread's CPU), ms",
                         f"{collection:.1f}", "", ""))
        if "gc" in only:
            for name, path_fn, count in (("trigger() loop", nb_loop, n),
                                          ("batch_trigger x500 + wait", nb_batch, n),
                                          ("trigger_async + gather", nb_async, n)):
                for policy in (True, False):
                    gc.collect()  # each measurement starts from the same collector state
                    with GCPauses() as spent:
                        path_fn(count, fresh(), policy)
                    rows.append((f"{name}{'' if policy else ', defer_gc=False'}: garbage "
                                 "collections, CPU µs/run (full ones)",
                                 f"{sum(spent.seconds) / count * 1e6:.2f} ({spent.counts[2]})",
                                 "", ""))
        if "neighbour" in only and quiet is not None:
            with cpu_neighbour():
                loaded = Paths(n, loop_n, args.repeat, fresh)
            rows.append(("with a CPU-burning neighbour: bare one-row commit, µs/run",
                         f"{loaded.commit[0] * 1e6:.1f}", "", ""))
            for (name, with_), without in zip(loaded.ratios().items(), quiet.ratios().values(),
                                              strict=True):
                rows.append((f"neighbour ÷ none: {name}", f"{with_ / without:.2f}", "≤ 1.5",
                             "≤ 1.2"))
        if "big" in only:
            big = fresh()
            build = fill_big(big, args.big_runs)
            # Alternated, best of at least five each: the loop's own time wanders by a third
            # from one measurement to the next, and a busy moment should hit both stores alike.
            empties, fulls = [], []
            for _ in range(max(5, args.repeat)):
                empties.append(nb_loop(loop_n, fresh())[0])
                fulls.append(nb_loop(loop_n, big)[0])
            empty, full = min(empties), min(fulls)
            rows.append((f"trigger() loop on {args.big_runs:,} stored runs (filled in "
                         f"{build:.0f} s) ÷ empty store", f"{full / empty:.2f}", "≤ 1.2",
                         "≤ 1.05"))
        if "lock" in only:
            secs, lock, store_lock = lock_times(loop_n, fresh())
            cell = threading.current_thread().name
            us = 1e6 / loop_n
            held, waited = sum(lock.holds.get(cell, [])), sum(lock.waits.get(cell, []))
            writer = store_lock.holds.get("nbtasks-writer", [])
            rows += [
                ("trigger() loop (locks timed), µs/run", f"{secs * us:.1f}", "", ""),
                ("  the cell holds the intake's lock (its insert), µs/run",
                 f"{held * us:.1f}", "", ""),
                ("    of which its CPU time, µs/run",
                 f"{sum(lock.holds_cpu.get(cell, [])) * us:.1f}", "", ""),
                ("    the same, median of one call, µs",
                 f"{_median(lock.holds.get(cell, [])) * 1e6:.1f}", "", ""),
                ("  the cell waits for it (the writer taking and deleting folded rows), µs/run",
                 f"{waited * us:.1f}", "", ""),
                ("  the rest (the cell's Python, and the GIL), µs/run",
                 f"{(secs - held - waited) * us:.1f}", "", ""),
                (f"the writer holds the store's lock ({len(writer)} commits, median "
                 f"{_median(writer) * 1e3:.2f} ms), µs/run", f"{sum(writer) * us:.1f}", "", ""),
            ]
            secs, store_lock, engine_cpu = batch_lock_times(n, fresh())
            us = 1e6 / n
            rows.append(("batch_trigger x500 + wait (store's lock timed), µs/run",
                         f"{secs * us:.1f}", "", ""))
            for name, who in ((cell, "the cell (its batches' inserts)"),
                              ("nbtasks-writer", "the writer (runs' progress)")):
                holds = store_lock.holds.get(name, [])
                rows += [
                    (f"  {who} holds the store's lock, µs/run (its CPU)",
                     f"{sum(holds) * us:.1f} ({sum(store_lock.holds_cpu.get(name, [])) * us:.1f})",
                     "", ""),
                    (f"  {who} waits for it, µs/run",
                     f"{sum(store_lock.waits.get(name, [])) * us:.1f}", "", ""),
                ]
            rows.append(("  the engine thread's CPU, µs/run", f"{engine_cpu * us:.1f}", "", ""))
        if "design" in only:
            slower, together = sqlite_beside_python(n, fresh())
            rows.append(("the SQLite a batch run needs, beside a thread running Python ÷ alone",
                         f"{slower:.2f}", "", ""))
            rows.append(("  the work of both threads ÷ the time one thread takes for it in turn",
                         f"{together:.2f}", "", ""))
            bare, own, child = [], [], []
            for _ in range(args.repeat):  # alternated, best of each
                bare.append(bare_asyncio(n))
                own.append(nb_batch(n, fresh()))
                child.append(nb_batch_child(n, fresh()))
            asyncio_, batch, sketch = (min(t, key=lambda x: x[0]) for t in (bare, own, child))
            us = 1e6 / n
            measured = {
                "bare asyncio, µs/run (CPU µs/run)": asyncio_,
                "batch_trigger x500 + wait, µs/run (CPU µs/run)": batch,
                "the same, commits made by a child process (a sketch), µs/run (the kernel's "
                "CPU µs/run)": sketch,
            }
            for i, (name, (wall, cpu, *_)) in enumerate(measured.items()):
                rows.append((name, f"{wall * us:.1f} ({cpu * us:.1f})", "", ""))
                if i:  # the paths, not the baseline
                    rows.append(("  ÷ bare asyncio (in the kernel's CPU time)",
                                 f"{wall / asyncio_[0]:.2f} ({cpu / asyncio_[1]:.2f})", "", ""))
            # Pipelined perfectly, the kernel and the child would run side by side on two cores
            # (the busier sets the pace), and in turn on one (with a neighbour).
            kernel, child_cpu = sketch[1], sketch[2]
            rows.append(("  the child's CPU, µs/run", f"{child_cpu * us:.1f}", "", ""))
            rows.append(("  the sketch's CPU bound ÷ bare asyncio: the kernel's and the child's "
                         "side by side / in turn", f"{max(kernel, child_cpu) / asyncio_[1]:.2f} / "
                         f"{(kernel + child_cpu) / asyncio_[1]:.2f}", "", ""))
    print()
    _table(rows)


if __name__ == "__main__":
    main()
