"""The Engine: a store, a clock, a scheduler on its own loop thread, and the ways in.

>>> with Engine(store=":memory:") as eng:                   # doctest: +SKIP
...     @eng.task(id="double")
...     def double(payload, ctx):
...         return payload * 2
...     double.trigger(21).wait().output
42

Module-level `nbtasks.task`, `nbtasks.runs`, ... use a default engine, created on first use
with `.nbtasks/runs.db` next to the notebook (see `configure`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import sqlite3
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from . import _capture
from ._clock import Clock, RealClock
from ._collector import COLLECTOR
from ._configure import check_defer_gc, check_loop_block_warning
from ._context import CURRENT, AttemptScope
from ._errors import EngineError, StoreError
from ._events import EngineConfig
from ._group_commit import AwaitGroup, GroupCommit
from ._handles import BatchHandle, BatchResult, Result, RunHandle
from ._lifecycle import GlobalHooks
from ._models import check_machine, parse_retry
from ._prepare import Prepared, QueueRequest, new_run, prepare_run, resolve
from ._queues_api import QueuesAPI
from ._recovery import child_ids, existing_runs, recover
from ._results import ResultWaiting
from ._runs import RunsAPI
from ._runstate import RunState, new_id
from ._runtime import LOOP_CLOSED, Runtime, forget_gone
from ._scheduler import Scheduler
from ._tasks import NOT_GIVEN, Registry, TaskDefinition, TaskFactory
from ._tokens import TokenBook
from ._wait import WaitAPI
from ._writer import GroupWriter
from .executors import Executor, InlineExecutor
from .stores import Store, WriteBatch, open_store

T = TypeVar("T")

#: Owners of engines open in this process (a same-pid engine row is alive only if listed here).
LIVE_OWNERS: set[str] = set()

#: Engines open in this process: lets a bare Run snapshot find the engine that runs it (reprs).
OPEN_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


class Engine(ResultWaiting):
    """An explicit engine, for tests and embedding; usable as a context manager."""

    scheduler: Scheduler  # created on the engine loop by _start()
    writer: GroupWriter
    #: trigger_async's group commit per caller loop (made on first use)
    _groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommit]
    #: `await handle`'s group per caller loop (made on first use)
    _await_groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AwaitGroup]

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        clock: Clock | None = None,
        concurrency_limit: int = 100,
        executor: Executor | None = None,
        registry: Registry | None = None,
        resume: bool = True,
        retry: Any = NOT_GIVEN,
        machine: str = "kernel",
        on_start: Any = None,
        on_success: Any = None,
        on_failure: Any = None,
        loop_block_warning: float = 1.0,
        defer_gc: bool = True,
    ) -> None:
        self.config = EngineConfig(concurrency_limit=_check_limit(concurrency_limit),
                                   resume=resume,
                                   hooks=GlobalHooks(on_start, on_success, on_failure),
                                   loop_block_warning=check_loop_block_warning(
                                       loop_block_warning, where="Engine"),
                                   defer_gc=check_defer_gc(defer_gc, where="Engine"))
        if retry is not NOT_GIVEN:
            self.config.retry = parse_retry(retry, where="configure: retry")
        self.config.machine = check_machine(machine, where="configure: machine")
        self.registry = registry if registry is not None else Registry()
        if self.registry.owner is None:  # the default registry keeps resolving the default engine
            self.registry.owner = lambda: self
        self.clock: Clock = clock or RealClock()
        self.owner = new_id("eng_")
        self.store: Store = open_store(store)
        self.inline = InlineExecutor()
        self.preset_executor: Executor | None = executor
        self.closed = False
        self._lookups = {}
        #: Runs a caller committed whose hand-over to the loop is still in the mailbox.
        self._admitting: dict[str, RunState] = {}
        self.task = TaskFactory(self.registry)
        self.schema_task = self.task.schema_task
        self.runs = RunsAPI(lambda: self)
        self.queues = QueuesAPI(lambda: self)
        self.wait = WaitAPI(lambda: self)
        self.tokens = TokenBook(self)
        from ._schedules import SchedulesAPI

        self.schedules = SchedulesAPI(lambda: self)
        self.runtime = Runtime()
        self.clock.bind(self.runtime.loop)
        LIVE_OWNERS.add(self.owner)
        OPEN_ENGINES.add(self)
        try:
            self.runtime.call(self._start)
        except BaseException as exc:
            self._abandon_start()
            if isinstance(exc, sqlite3.DatabaseError):  # e.g. a corrupt page found by recovery
                raise StoreError(f"{self.store.path}: {exc}") from exc
            raise
        self.registry.listen(self._on_define)
        _capture.install()
        atexit.register(self.close)

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.writer = GroupWriter(self.store, loop, self.runtime.inbox.streaming,
                                  self.runtime.inbox.turn)
        self.scheduler = Scheduler(
            loop=loop, clock=self.clock, writer=self.writer, registry=self.registry,
            config=self.config, executor_for=self.executor_for, owner=self.owner, engine=self,
        )
        for task_id in self.registry.ids():
            defn = self.registry.get(task_id)
            if defn is not None:
                self.scheduler.on_define(defn)
        recover(self)
        self.tokens.restore()
        from ._schedules import ScheduleBook

        self.schedule_book = ScheduleBook(self)
        self.schedule_book.restore()
        await self.writer.barrier()

    def _abandon_start(self) -> None:
        """Start-up failed: stop what it started. The engine thread in particular, or the
        interpreter would wait for it at exit and never quit."""
        self.closed = True
        self._leave_burst()  # recovery may have begun one
        self.runtime.close()  # the writer's thread is a daemon idle in get(): it never holds exit
        self.store.close()
        LIVE_OWNERS.discard(self.owner)
        OPEN_ENGINES.discard(self)

    def _leave_burst(self) -> None:
        """This engine puts no full garbage collection off any more (nbtasks._collector),
        from any thread: for when its loop can't end the burst itself."""
        scheduler = getattr(self, "scheduler", None)  # made on the loop by _start()
        if scheduler is not None:
            COLLECTOR.leave(scheduler)

    def _on_define(self, defn: TaskDefinition) -> None:
        if self.closed:
            return
        if self.runtime.in_loop():
            self.scheduler.on_define(defn)
        else:
            self.runtime.inbox.post(self.scheduler.on_define, defn)

    def executor_for(self, machine: str) -> Executor:
        if machine == "kernel":
            return self.inline
        if self.preset_executor is None:
            from .executors.process import ProcessExecutor

            self.preset_executor = ProcessExecutor()
        return self.preset_executor

    def close(self) -> None:
        """Commit what is pending and stop the engine thread. Never hangs the kernel."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        self.registry.unlisten(self._on_define)
        try:
            fut = self.runtime.submit(self._shutdown)
            fut.result(timeout=10)
        except (concurrent.futures.TimeoutError, EngineError, RuntimeError, StoreError):
            pass  # a store deleted under the engine already said so on every trigger since
        self._leave_burst()  # also when the loop could not end its burst itself
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.abandon()  # a store that still can't be written must not hang the exit
        self.runtime.close()
        self.store.close()
        LIVE_OWNERS.discard(self.owner)
        OPEN_ENGINES.discard(self)

    async def _shutdown(self) -> None:
        self.scheduler.end_burst()
        self.schedule_book.close()
        for executor in {self.inline, self.preset_executor}:
            if executor is not None:
                await executor.close()
        self.writer.statement("DELETE FROM engines WHERE owner = ?", (self.owner,))
        await self.writer.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Engine {self.store.path} {'closed' if self.closed else 'running'}>"

    @property
    def store_problem(self) -> str | None:
        """Why the store can't be written right now (SQLite's message and the path), or None.

        Set while the writer retries a commit (a held lock, a full disk); nothing is dropped
        meanwhile, and nothing starts before its run is recorded.
        """
        writer = getattr(self, "writer", None)
        return None if writer is None else writer.problem

    # ------------------------------------------------------------------ configure

    def configure(self, **options: Any) -> None:
        """Change hooks, default retry/machine, concurrency limit, executor, resume."""
        from ._configure import apply_to_engine

        apply_to_engine(self, options)

    # ------------------------------------------------------------------ loop helpers

    def on_loop(self, fn: Any, *args: Any) -> Any:
        """Call a plain function on the engine loop from any thread and return its value."""
        if self.runtime.in_loop():
            return fn(*args)

        async def _call() -> Any:
            return fn(*args)

        return self.runtime.call(_call)

    def subscribe(self, fn: Any) -> Any:
        """Call `fn(RunEvent)` on the engine loop for every change; returns an unsubscribe."""
        self.on_loop(self.scheduler.subscribers.append, fn)

        def unsubscribe() -> None:
            if fn in self.scheduler.subscribers:
                self.on_loop(self.scheduler.subscribers.remove, fn)

        return unsubscribe

    # ------------------------------------------------------------------ triggering (TaskOwner)

    def _prepare(self, defn: TaskDefinition, payload_json: str, options: dict[str, Any],
                 **extra: Any) -> tuple[RunState, QueueRequest | None]:
        return prepare_run(self, defn, payload_json, options, CURRENT.get(), **extra)

    def _handle(self, run: RunState, wanted: RunState) -> RunHandle[Any]:
        """The handle holds the engine's own state of a new run, so asking a finished run for
        its result later costs no cross-thread call and no store read (it lets go of the state
        once it has the result). A cached idempotent run is looked up instead."""
        if run is not wanted:
            return RunHandle(self, run.id, run.task_id, is_cached=True)
        return RunHandle(self, run.id, run.task_id, run=run)

    def _submit(self, run: RunState, queue: QueueRequest | None) -> RunState:
        """On the loop: register a run whose row the writer commits; it starts once it has."""
        if queue is not None:
            self.scheduler.dispatcher.configure(*queue)
        if run.idempotency_key is not None:
            cached = self._stored_idempotent(run)
            if cached is not None:
                return cached
        return self.scheduler.submit(run)

    def _stored_idempotent(self, run: RunState) -> RunState | None:
        """A finished run with the same key, from the store (active ones are found in memory)."""
        if (run.task_id, run.idempotency_key) in self.scheduler.idempotency:
            return None
        _, rows = self.store.select(
            "SELECT id, idempotency_expires_at FROM runs WHERE task_id = ? AND idempotency_key = ?"
            " ORDER BY created_at DESC LIMIT 1", (run.task_id, run.idempotency_key))
        if not rows:
            return None
        run_id, expires = rows[0]
        if expires is not None and expires <= self.clock.now():
            self.writer.statement("UPDATE runs SET idempotency_key = NULL WHERE id = ?", (run_id,))
            return None
        found = RunState(str(run_id), run.task_id, "null", self.clock.now())
        found.recorded = True
        return found

    def _submit_when_durable(self, run: RunState,
                             queue: QueueRequest | None) -> asyncio.Future[RunState]:
        """Submit now; a future for the run, resolved once it is committed (no task needed)."""
        got = self._submit(run, queue)
        out: asyncio.Future[RunState] = self.runtime.loop.create_future()
        if got.recorded:
            out.set_result(got)
        else:
            self.writer.after_commit(partial(_settle_trigger, out, got), urgent=True)
        return out

    def _commit_new(self, runs: list[RunState], intake: bool = False) -> None:
        """On the calling thread: commit the rows of new runs before anything can start them.

        The caller's own connection, one transaction, no trip through the engine loop: this is
        what lets a `trigger()` loop in a cell run at close to SQLite's own speed, and the run
        is on disk before the loop even hears of it. If the store can't take it (a lock held
        past the busy timeout, a full disk) this raises `StoreError` with nothing recorded and
        nothing started. `intake`: a cell's single `trigger()`, which the SQLite store commits
        into its intake file (nbtasks.stores._intake); a batch goes straight into `runs`,
        where its rows share one transaction (docs/design.md says why).
        """
        if self.closed or self.runtime.closed:
            raise EngineError("the engine is closed")
        seq, owner = self.scheduler.seq, self.owner
        for run in runs:
            run.seq = next(seq)
            run.owner = owner
        rows = [run.row() for run in runs]
        try:
            self.store.write(WriteBatch(runs=rows, fresh=True, intake=intake))
        except StoreError:
            raise
        except RuntimeError as exc:
            raise EngineError(f"the engine is closed ({exc})") from None
        except Exception as exc:
            raise StoreError(f"{self.store.path}: the store refused the run's record "
                             f"({type(exc).__name__}: {exc}); nothing was recorded") from exc
        admitting = self._admitting
        for run, row in zip(runs, rows, strict=True):
            run.recorded = True
            run.stored = row
            admitting[run.id] = run  # only ever popped by key on the loop: safe from any thread

    def drives(self, run_id: str) -> bool:
        """True if this engine runs `run_id` now (active, or handed over and not yet taken)."""
        return run_id in self.scheduler.active or run_id in self._admitting

    def _per_loop(self, attr: str, loop: asyncio.AbstractEventLoop,
                  make: Callable[[Engine, asyncio.AbstractEventLoop], T]) -> T:
        """The one `make(self, loop)` of this engine for a caller's loop, kept while it lives."""
        groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] | None = getattr(
            self, attr, None)
        if groups is None:
            groups = weakref.WeakKeyDictionary()
            setattr(self, attr, groups)
        group = groups.get(loop)
        if group is None:
            forget_gone(groups, LOOP_CLOSED)
            group = groups[loop] = make(self, loop)
        return group

    def _group_commit(self, loop: asyncio.AbstractEventLoop) -> GroupCommit:
        return self._per_loop("_groups", loop, GroupCommit)

    def result_soon(self, run_id: str) -> Awaitable[Result[Any]]:
        """`await handle` for a run not known final: the awaits a coroutine loop makes in one
        turn (`asyncio.gather(*handles)`) share one trip to the engine loop. Inside a run, or
        on the engine loop itself, the wait parks its run: the one-by-one path does that."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or loop is self.runtime.loop or CURRENT.get() is not None:
            return self.result_async(run_id)
        return self._per_loop("_await_groups", loop, AwaitGroup).add(run_id)

    def _admit(self, prepared: list[tuple[RunState, QueueRequest | None]]) -> None:
        """On the loop: arm runs whose rows their caller committed."""
        admitting = self._admitting
        for run, queue in prepared:
            admitting.pop(run.id, None)
            if queue is not None:
                self.scheduler.dispatcher.configure(*queue)
            self.scheduler.submit(run, recorded=True)

    def _post_admit(self, prepared: list[tuple[RunState, QueueRequest | None]]) -> None:
        # In slices, so one big batch never holds the loop for long.
        for i in range(0, len(prepared), 64):
            self.runtime.inbox.post_lazy(self._admit, prepared[i:i + 64])

    def trigger_encoded(self, defn: TaskDefinition, payload_json: str,
                        options: dict[str, Any], **extra: Any) -> RunHandle[Any]:
        run, queue = self._prepare(defn, payload_json, options, **extra)
        if self.runtime.in_loop():
            # Inside an async body: recorded with the next commit, and started only after it.
            return self._handle(self._submit(run, queue), run)
        if run.idempotency_key is not None:
            # The key is checked on the loop, so two callers with one key can't both run.
            return self._handle(self.runtime.call(self._submit_when_durable, run, queue), run)
        self._commit_new([run], intake=True)
        self._post_admit([(run, queue)])
        return self._handle(run, run)

    async def trigger_async(self, defn: TaskDefinition, payload_json: str,
                            options: dict[str, Any], **extra: Any) -> RunHandle[Any]:
        """trigger() for async callers on any loop: returns once the run is durable.

        Inside an async body it returns at once, as trigger() does there: the run's row rides
        in the next commit, which also carries whatever the body does next. Waiting for it
        would leave the body's run recorded as executing with children already triggered, and
        a kernel killed just then would retry that attempt instead of resuming it.
        """
        run, queue = self._prepare(defn, payload_json, options, **extra)
        if self.runtime.in_loop():
            return self._handle(self._submit(run, queue), run)
        if run.idempotency_key is None:
            got = await self._group_commit(asyncio.get_running_loop()).add(run, queue)
            return self._handle(got, run)
        got = await self.runtime.run(self._submit_when_durable, run, queue)
        return self._handle(got, run)

    async def trigger_and_wait_encoded(self, defn: TaskDefinition, payload_json: str,
                                       options: dict[str, Any]) -> Result[Any]:
        run, queue = self._prepare(defn, payload_json, options)
        scope = CURRENT.get()
        return await self.runtime.run(self._trigger_and_wait, run, queue, scope)

    async def _trigger_and_wait(self, run: RunState, queue: QueueRequest | None,
                                scope: AttemptScope | None) -> Result[Any]:
        (run_id,) = self._submit_children([(run, queue)], scope)
        return await self._wait_one(run_id, scope)

    def _submit_children(self, prepared: list[tuple[RunState, QueueRequest | None]],
                         scope: AttemptScope | None) -> list[str]:
        """Submit the runs a `*_and_wait` call waits for; returns their ids in item order.

        Inside a run they get ids derived from the call's place in the attempt, so an attempt
        resumed after a kernel restart waits for the runs it had triggered (nbtasks._recovery).
        """
        parent = self._parked(scope)
        known: set[str] = set()
        if parent is not None:
            for (run, _), child_id in zip(prepared, child_ids(parent, len(prepared)), strict=True):
                run.id = child_id
            if parent.replay is not None:
                known = existing_runs(self, parent, [run.id for run, _ in prepared])
        return [run.id if run.id in known else self._submit(run, queue).id
                for run, queue in prepared]

    def _batch(self, defn: TaskDefinition, items: list[tuple[str, dict[str, Any]]],
               options: dict[str, Any]) -> tuple[str, list[tuple[RunState, QueueRequest | None]]]:
        """The batch's runs, made at one `now`. The batch's own options are resolved once, for
        every item that sets none (the first such item's, so options every item overrides are
        never looked at); an item with options of its own resolves the merge of both."""
        batch_id = new_id("batch_")
        now, scope = self.clock.now(), CURRENT.get()
        shared: Prepared | None = None
        prepared = []
        for pj, opts in items:
            if opts:
                p = resolve(self, defn, {**options, **opts}, scope, now)
            else:
                if shared is None:
                    shared = resolve(self, defn, options, scope, now)
                p = shared
            prepared.append((new_run(p, defn.id, pj, now, batch_id=batch_id), p.queue_request))
        return batch_id, prepared

    async def _submit_batch(self, prepared: list[tuple[RunState, QueueRequest | None]]
                            ) -> list[RunState]:
        runs = [self._submit(run, queue) for run, queue in prepared]
        await self.writer.barrier()
        for run in runs:
            if run.withdrawn is not None:
                raise run.withdrawn
        return runs

    def batch_trigger_encoded(self, defn: TaskDefinition, items: list[tuple[str, dict[str, Any]]],
                              options: dict[str, Any]) -> BatchHandle[Any]:
        batch_id, prepared = self._batch(defn, items, options)
        if self.runtime.in_loop():
            runs = [self._submit(run, queue) for run, queue in prepared]
        elif any(run.idempotency_key is not None for run, _ in prepared):
            runs = self.runtime.call(self._submit_batch, prepared)
        else:
            self._commit_new([run for run, _ in prepared])  # the whole batch, one transaction
            self._post_admit(prepared)
            runs = [run for run, _ in prepared]
        return BatchHandle(self, batch_id, [
            self._handle(got, want) for got, (want, _) in zip(runs, prepared, strict=True)])

    async def batch_trigger_and_wait_encoded(
        self, defn: TaskDefinition, items: list[tuple[str, dict[str, Any]]],
        options: dict[str, Any],
    ) -> BatchResult[Any]:
        batch_id, prepared = self._batch(defn, items, options)
        scope = CURRENT.get()

        async def _go() -> list[Result[Any]]:
            return await self._wait_many(self._submit_children(prepared, scope), scope)

        return BatchResult(batch_id, await self.runtime.run(_go))


def _settle_trigger(out: asyncio.Future[RunState], run: RunState) -> None:
    if out.done():
        return
    if run.withdrawn is not None:
        out.set_exception(run.withdrawn)
    else:
        out.set_result(run)


def _check_limit(limit: Any) -> int:
    from ._errors import ConfigurationError

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"concurrency_limit must be a positive int, got {limit!r}")
    return limit
