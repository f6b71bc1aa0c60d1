"""Machine presets in worker processes: a warm pool per preset, memory and CPU held to it.

>>> nbtasks.configure(executor=nbtasks.executors.ProcessExecutor(max_workers={"micro": 2}))
...                                                         # doctest: +SKIP

The engine gives every run whose machine is a preset (`micro` ... `large-2x`) to this executor.
One attempt runs in one worker at a time, its whole lifecycle there (hooks and run, as
Trigger.dev does), its logs, metadata, tags and waits forwarded to the kernel live.

- **Pools.** A preset's pool holds at most `floor(host cores / preset vCPUs)` workers, fewer if
  host memory can't hold that many of its RAM (80% of it, at most 32). A preset bigger than the
  host still runs on what there is, and says so once.
- **Memory.** A worker past its preset's RAM is killed; the attempt fails with
  OutOfMemoryError naming the preset and the memory used, and `retry.out_of_memory.machine`
  moves the run to a bigger preset (see `_pool.MemoryWatcher` for how and why).
- **CPU.** A worker gets `ceil(vCPUs)` whole cores by affinity, and the BLAS/OpenMP
  thread-count variables say the same number.
- **Crashes.** A worker that dies mid-attempt (a signal, a segfault, `os._exit`) fails that
  attempt with WorkerCrashedError naming the signal or exit code; the retry policy applies and
  the pool starts a replacement. Other runs are untouched: each has its own process.
- **Look-ahead.** While runs wait for a worker, a busy worker holds up to four more attempts
  queued behind its run, so it never idles through the kernel's round trip; a queued attempt
  hasn't started until the one ahead is done, so a crash, a cancel or a retiring worker sends it back
  to the pool, never lost and never run twice (see `_pool`).
- **Cancel and max_duration** kill the worker (and its process group), so a run stuck in C code
  stops too. Its on_cancel and cleanup hooks don't run: the process is gone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.spawn
import multiprocessing.util  # its exit hook must be registered before ours (see _kill_all)
import os
import pickle
import sys
import types
import weakref
from collections.abc import Mapping
from typing import Any

import psutil

from .._context import AttemptScope
from .._errors import OutOfMemoryError, TaskRunError, WorkerCrashedError
from .._lifecycle import AttemptOutcome, AttemptPlan
from .._models import MACHINES, MachinePreset, check_machine
from . import _worker
from ._dask_wire import loads_args
from ._pool import DIED, Lane, MemoryWatcher, Message, Pool, Worker, describe_exit
from ._serve import PARKING, serve
from ._wire import Job, dump_job, failed_outcome, outcome_from
from ._worker import Snapshot

log = logging.getLogger("nbtasks.machines")

#: Workers whose RSS is still over this share of their limit after a run are replaced, so the
#: next run doesn't start with someone else's memory.
RECYCLE_SHARE = 0.5
MAX_POOL = 32
_PROC_CWD = os.path.exists(f"/proc/{os.getpid()}/cwd")
_EXECUTORS: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


def pool_size(preset: MachinePreset, cpus: int | None = None, memory: int | None = None) -> int:
    """How many workers of `preset` the host holds at once (at least one)."""
    cpus = cpus or len(_available_cores())
    memory = memory or psutil.virtual_memory().total
    by_cpu = math.floor(cpus / preset.cpu)
    by_memory = math.floor(memory * 0.8 / preset.memory_bytes)
    return max(1, min(by_cpu, by_memory, MAX_POOL))


def too_big(preset: MachinePreset) -> str | None:
    """Why the host is smaller than `preset`, or None."""
    cpus, memory = len(_available_cores()), psutil.virtual_memory().total
    if preset.cpu > cpus or preset.memory_bytes > memory:
        return (f"the {preset.name} machine ({preset.cpu:g} vCPU, {preset.memory:g} GB) is bigger "
                f"than this host ({cpus} cores, {memory / 1e9:.1f} GB): its runs get what "
                "there is")
    return None


def _available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return list(range(os.cpu_count() or 1))


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([_worker.__name__])
    return ctx


class _SpawnWithoutMain:
    """multiprocessing's `spawn` module, except that the data a new process prepares itself
    with never names the parent's `__main__`.

    multiprocessing tells each child to import the parent's main script (as `__mp_main__`) so
    that functions defined there unpickle. Ours never need it: a task's functions travel by
    value (cloudpickle), and the worker's entry point lives in nbtasks. Importing it would run
    a script without an `if __name__ == "__main__":` guard again in every worker: its side
    effects twice, its own preset trigger failing with a bootstrap error.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing.spawn, name)

    @staticmethod
    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = multiprocessing.spawn.get_preparation_data(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data


def _popen_without_main() -> type:
    """The fork server's Popen, whose launch sees `_SpawnWithoutMain` as its `spawn`.

    The stdlib's own launch code runs unchanged (no copy of it to drift from a new Python);
    only the `spawn` name it looks up is ours, and nothing global is patched, so the user's own
    processes still get their `__main__`.
    """
    from multiprocessing import popen_forkserver

    base = popen_forkserver.Popen
    launch = base._launch  # type: ignore[attr-defined]
    scope = dict(launch.__globals__, spawn=_SpawnWithoutMain())
    own = types.FunctionType(launch.__code__, scope, launch.__name__, launch.__defaults__,
                             launch.__closure__)
    return type("WorkerPopen", (base,), {"_launch": own})


class _WorkerProcess(multiprocessing.context.ForkServerProcess):
    """A fork-server process that never imports the parent's `__main__`."""

    _popen_class: type | None = None

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        if _WorkerProcess._popen_class is None:
            _WorkerProcess._popen_class = _popen_without_main()
        return _WorkerProcess._popen_class(process_obj)


class ProcessExecutor:
    """Runs preset attempts in warm worker processes; see the module docstring.

    `max_workers` caps pool sizes: one number for every preset, or a dict per preset name.
    """

    name = "process"

    def __init__(self, max_workers: int | Mapping[str, int] | None = None, *,
                 memory_interval: float = 0.02, start_timeout: float = 60.0) -> None:
        if isinstance(max_workers, Mapping):
            for preset in max_workers:
                check_machine(preset, where="ProcessExecutor: max_workers")
        self.max_workers = max_workers
        self.start_timeout = start_timeout
        self.pools: dict[str, Pool] = {}
        self.watcher = MemoryWatcher(memory_interval)
        self._ctx = _context()
        self._next_core = 0
        self._announced: set[str] = set()
        self._env_key: tuple[Any, ...] | None = None
        self._env: Snapshot = ("", [], {})
        _EXECUTORS.add(self)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{p.preset}: {len(p.workers)}/{p.size}"
                          + (f" (+{p.starting} starting)" if p.starting else "")
                          for p in self.pools.values())
        return f"<ProcessExecutor {sizes or 'no pools yet'}>"

    # ------------------------------------------------------------------ pools

    def size_of(self, preset: MachinePreset) -> int:
        cap = self.max_workers
        if isinstance(cap, Mapping):
            cap = cap.get(preset.name)
        size = pool_size(preset)
        return max(1, min(size, cap)) if cap is not None else size

    def pool(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            preset = MACHINES[check_machine(name)]
            pool = self.pools[name] = Pool(name, self.size_of(preset),
                                           lambda: self._spawn(preset))
        return pool

    async def _spawn(self, preset: MachinePreset) -> Worker:
        cores = _worker.cores_for(preset.cpu, _available_cores(), self._next_core)
        self._next_core += len(cores)
        # Starting a process blocks (the first one starts the fork server): not on the loop.
        process, conn = await asyncio.to_thread(self._start_process, cores, preset.memory_bytes)
        worker = Worker(process, conn, preset.name, asyncio.get_running_loop())
        worker.exited.add_done_callback(lambda _f: self.watcher.unwatch(worker))
        try:
            await worker.wait_ready(within=self.start_timeout)
        except asyncio.CancelledError:
            # The pool closed while it started: it is in no pool yet, so nothing else would
            # kill it, and multiprocessing's exit hook would wait for it forever (the loop's
            # reader keeps its pipe open, so it never reads the end of it and exits).
            worker.kill()
            raise
        return worker

    def _start_process(self, cores: list[int], limit: int) -> tuple[Any, Any]:
        parent, child = self._ctx.Pipe(duplex=True)
        process = _WorkerProcess(target=_worker.main,
                                 args=(child, cores, os.getpid(), limit, RECYCLE_SHARE),
                                 name="nbtasks-worker")
        process.start()
        child.close()
        return process, parent

    async def start(self) -> None:
        return None

    # ------------------------------------------------------------------ attempts

    async def execute(self, plan: AttemptPlan, scope: AttemptScope) -> AttemptOutcome:
        preset = MACHINES[plan.ctx.machine.name]
        pool = self.pool(preset.name)
        if preset.name not in self._announced:
            self._announced.add(preset.name)
            if (why := too_big(preset)) is not None:
                log.warning("%s", why)
                scope.sink.log("warn", why, {"machine": preset.name})
        try:
            job = dump_job(plan, scope)
        except Exception as exc:
            err = TaskRunError(
                f"task {plan.defn.id!r} can't be sent to a {preset.name} worker: "
                f"{type(exc).__name__}: {exc}. What a task's functions refer to must be "
                "picklable; open clients and connections inside the run instead")
            return failed_outcome(plan, err, retry=False)
        while True:
            worker = await pool.acquire()
            outcome = await self._run_on(worker, pool, preset, plan, scope, job)
            if outcome is not None:
                return outcome
            # It never started there (see _pool.LOOKAHEAD): no attempt was spent, try again.

    async def _run_on(self, worker: Worker, pool: Pool, preset: MachinePreset,
                      plan: AttemptPlan, scope: AttemptScope, job: Job) -> AttemptOutcome | None:
        """The attempt on `worker`; None when it never started there."""
        loop = asyncio.get_running_loop()
        key = f"{plan.ctx.run.id}/{plan.ctx.attempt.number}"
        calls: dict[int, asyncio.Task[None]] = {}

        def on_message(message: Message) -> None:
            kind = message[0]
            if kind == "log":
                _, _, level, text, attributes = message
                scope.sink.log(str(level), str(text),
                               attributes if isinstance(attributes, dict) else None)
            elif kind == "metadata" and isinstance(message[2], dict):
                scope.metadata = message[2]
                scope.sink.metadata_changed(message[2])
            elif kind == "tags" and isinstance(message[2], list):
                scope.tags = [str(t) for t in message[2]]
                scope.sink.tags_changed(scope.tags)
            elif kind == "call":
                _, _, rid, method, args = message
                calls[rid] = loop.create_task(
                    self._answer(worker, pool, scope, rid, str(method), loads_args(args)))
            elif kind == "cancel" and (task := calls.pop(message[2], None)) is not None:
                task.cancel()

        def resend() -> None:
            worker.send(("run", key, None, tuple(job)))
            worker.code.add(job.code_hash, True)

        lane = Lane(key, loop, on_message, resend)
        snapshot = self._snapshot()
        reuse = later = False
        worker.lanes[key] = lane
        try:
            # The function's bytes only the first time this worker sees them (see _wire.Job).
            # A plain tuple: pickling the NamedTuple cost three times as much.
            known = job.code_hash in worker.code
            worker.send(("run", key, None if snapshot is worker.env else snapshot,
                         (None, *job[1:]) if known else tuple(job)))
            worker.env = snapshot
            if not known:
                worker.code.add(job.code_hash, True)
            self.watcher.watch(worker, preset.memory_bytes)
            # One future: the worker's death ends it too (with DIED, see Worker._on_exit).
            if await lane.ended is None:
                reuse = True
                return None
            outcome, reuse = self._conclude(worker, preset, plan, lane, job.code_hash)
            return outcome
        except asyncio.CancelledError:
            if worker.alive and worker.queued(lane):
                # Not started: ask for it back; should it start first, the worker is killed then.
                lane.abandoned = True
                worker.skip(lane)
                later = True  # released when the worker answers, not now
                lane.ended.add_done_callback(lambda _f: self._after(worker, pool, lane, True))
            raise
        finally:
            for task in calls.values():
                task.cancel()
            if not later:
                self._after(worker, pool, lane, reuse)

    def _after(self, worker: Worker, pool: Pool, lane: Lane, reuse: bool) -> None:
        """The attempt is off `worker`: release it (not reused: killed, see Pool.release)."""
        worker.lanes.pop(lane.key, None)
        if not worker.lanes:
            self.watcher.unwatch(worker)
        pool.release(worker, reuse=reuse)

    def _conclude(self, worker: Worker, preset: MachinePreset, plan: AttemptPlan,
                  lane: Lane, job_hash: bytes) -> tuple[AttemptOutcome, bool]:
        limit = preset.memory_bytes
        message = lane.ended.result() if lane.ended.done() else None
        if message is DIED:
            message = None
        peak = max(worker.oom_rss or 0, message.get("maxrss", 0) if message else 0)
        if peak > limit:
            # Rounded up: a run just past the limit must not read "used 256 MB, over 256 MB".
            used, cap = math.ceil(peak / 1e6), limit / 1e6
            return failed_outcome(plan, OutOfMemoryError(
                f"the run used {used} MB of memory, over the {preset.name} machine's "
                f"{cap:.0f} MB; give it a bigger machine, or retry on one with "
                "retry={'out_of_memory': {'machine': ...}}")), False
        if message is None:
            code = worker.exited.result() if worker.exited.done() else None
            return failed_outcome(plan, WorkerCrashedError(
                f"the {preset.name} worker running this attempt (pid {worker.pid}) died: "
                f"{describe_exit(code)}")), False
        if "load_error" in message:
            worker.code.discard(job_hash)  # it didn't keep what it couldn't load
            record = message["load_error"]
            return failed_outcome(plan, TaskRunError(record["message"])), True
        # The worker itself says whether its memory stayed high after the run (`retire`):
        # it then starts nothing more, and is replaced.
        return outcome_from(message, plan), not message.get("retire")

    def _snapshot(self) -> Snapshot:
        """The kernel's sys.path and environment (and cwd where workers can't read it from
        /proc); the same object while none changed, so a warm worker is sent nothing."""
        environ = getattr(os.environ, "_data", None)  # bytes view: compared without decoding
        cwd = None if _PROC_CWD else os.getcwd()
        last = self._env_key  # compared in place: copying the environment cost more
        if (last is None or environ is None or cwd != last[0] or sys.path != last[1]
                or environ != last[2]):
            self._env_key = (cwd, list(sys.path), dict(environ) if environ is not None else None)
            self._env = (cwd, list(sys.path), dict(os.environ))
        return self._env

    async def _answer(self, worker: Worker, pool: Pool, scope: AttemptScope, rid: int,
                      method: str, args: tuple[Any, ...]) -> None:
        parks = method in PARKING
        if parks:
            worker.parked += 1
            worker.skip_queued()  # what is queued behind it may be what it waits for
            pool.grow()  # a run waiting for a worker may take this one's place meanwhile
        try:
            reply: Message = ("reply", rid, True, await serve(scope, method, args))
        except asyncio.CancelledError:
            return
        except Exception as exc:
            reply = ("reply", rid, False, exc)
        finally:
            if parks:
                worker.parked -= 1  # a borrowed worker is retired at the next release
        if not worker.alive:
            return
        try:
            worker.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            worker.send(("reply", rid, False, TaskRunError(f"the answer can't be sent: {exc}")))

    async def close(self) -> None:
        """Kill every worker now: their runs are already final when the engine closes."""
        self.watcher.close()
        for pool in self.pools.values():
            pool.close()


def _kill_all() -> None:
    """At interpreter exit: multiprocessing would otherwise wait for our workers forever.

    Its list of children is asked too: a worker still starting when its pool closed is in no
    pool, and the exit must not hang on it either.
    """
    for executor in list(_EXECUTORS):
        for pool in executor.pools.values():
            for worker in list(pool.workers):
                with contextlib.suppress(Exception):
                    worker.kill()
    for process in multiprocessing.active_children():
        if isinstance(process, _WorkerProcess) and process.pid:
            with contextlib.suppress(OSError):
                process.kill()  # one still starting has run nothing: no group to end


atexit.register(_kill_all)  # after multiprocessing's own exit hook, so it runs before it
