"""The scheduler: every run's life on the engine loop, from trigger to a final status.

It owns the active runs (history lives in the store), hands them to the dispatcher for slots,
runs attempts through an executor, applies retry decisions on the clock, parks runs that wait
(giving their slot back, docs/design.md, decision 4), and ends runs by cancel, TTL or max_duration. Each
change goes through `transition()` and is marked for the group-commit writer and published as a
`RunEvent`. Nothing here blocks and nothing polls: timers are the clock's, wake-ups are futures.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from ._capture import flush_partial_lines
from ._clock import Clock, TimerHandle
from ._collector import (
    ARRIVALS_STRIDE,
    BURST_RUNS,
    CHECK_EVERY,
    COLLECTOR,
    IDLE_GRACE,
    QUIET_RUNS,
)
from ._context import (
    CURRENT,
    AttemptScope,
    CancelSignal,
    MachineInfo,
    QueueInfo,
    StartedContext,
    TaskContext,
    TaskInfo,
)
from ._errors import KernelRestartError, MaxDurationExceededError
from ._events import EngineConfig, RunEvent, RunSink, attributes_json
from ._lifecycle import (
    AttemptOutcome,
    AttemptPlan,
    error_record,
    failed,
    is_async,
    output_json_of,
)
from ._models import MACHINES, RetryOptions
from ._payload import loads
from ._queues import Dispatcher
from ._refusals import remember, store_lost, store_refused
from ._retry import decide, effective_options
from ._runstate import AttemptState, RunState
from ._status import FINAL, RunStatus, transition
from ._tasks import NOT_GIVEN, Registry, TaskDefinition
from ._text import escape_text
from ._watchdog import LoopWatch, timed_steps
from ._writer import GroupWriter
from .executors._base import Executor

T = TypeVar("T")
S = RunStatus


#: ctx.machine is frozen, so one instance per preset serves every attempt.
_MACHINE_INFO = {name: MachineInfo(p.name, p.cpu, p.memory) for name, p in MACHINES.items()}

#: Attempts started (or waits resumed) per turn of the engine loop. Each costs a task and its
#: first step in the next turn, tens of microseconds for a short body: 64 keep a turn to a
#: few milliseconds while a burst still starts thousands of runs a second.
STARTS_PER_TURN = 64


class Scheduler:
    """All methods run on the engine loop (the `_on_loop` callers marshal onto it)."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        clock: Clock,
        writer: GroupWriter,
        registry: Registry,
        config: EngineConfig,
        executor_for: Callable[[str], Executor],
        owner: str,
        engine: Any = None,
    ) -> None:
        self.loop = loop
        self.loop_thread = threading.get_ident()
        self.clock = clock
        self.writer = writer
        writer.on_refused = partial(store_refused, self)
        writer.on_lost = partial(store_lost, self)
        self.registry = registry
        self.config = config
        self.executor_for = executor_for
        self.owner = owner
        self.engine = engine
        self.active: dict[str, RunState] = {}
        self.idempotency: dict[tuple[str, str], RunState] = {}
        self.undeployed: dict[str, list[RunState]] = {}
        #: Runs whose first commit was refused, by id (the last 1,000): a late waiter's answer.
        self.withdrawn: dict[str, RunState] = {}
        self.held: list[RunState] = []  # interrupted runs kept for the user (resume=False)
        self.dispatcher = Dispatcher(config.concurrency_limit, self._start)
        self.subscribers: list[Callable[[RunEvent], None]] = []
        self.seq = itertools.count(1)
        self.late_results = 0
        self.watch = LoopWatch(self, config.loop_block_warning)
        # ctx parts that never change for a task or a queue: made once, shared by attempts
        self._task_infos: dict[str, TaskInfo] = {}
        #: Retry policies with a trigger's max_attempts applied, by (id(policy), max_attempts);
        #: the policy is kept beside its copy so a reused id can't match.
        self._retry_copies: dict[tuple[int, int], tuple[RetryOptions, RetryOptions | None]] = {}
        self._queue_infos: dict[str, QueueInfo] = {}
        #: Per task id: its definition and whether its attempts may take the plain path.
        self._plain: dict[str, tuple[TaskDefinition, bool]] = {}
        #: Tasks parked for a run besides its attempt task (a sync body's blocking wait runs in
        #: a task of its own); stop() cancels them so the body's thread is let go.
        self.blocking: dict[str, set[asyncio.Task[Any]]] = {}
        #: Starts made this loop turn, and runs holding a slot whose start waits for the next.
        self._turn_starts = 0
        self._deferred: deque[tuple[RunState, int]] = deque()
        #: In a burst (`nbtasks._collector`), since when it has been quiet (clock time), and
        #: the timer that checks on it.
        self._burst = False
        #: Runs tracked so far, and (clock time, that count) at the start of the current
        #: window of arrivals (see `_fast_arrivals`).
        self._arrivals = 0
        self._window = (0.0, 0)
        self._checked = 0  # arrivals at the last check of a burst
        self._quiet_since: float | None = None
        self._burst_timer: TimerHandle | None = None

    # ------------------------------------------------------------------ events

    def emit(self, kind: str, run: RunState) -> None:
        if self.subscribers:
            event = RunEvent(kind, run.id, run.task_id, run.status, run.updated_at)
            for fn in self.subscribers:
                fn(event)

    def _set(self, run: RunState, status: RunStatus, now: float | None = None) -> None:
        """Move `run` to `status`, stamped `now` (read from the clock if not given: an
        attempt's start and end reuse the one reading they already made)."""
        run.status = transition(run.status, status)
        run.updated_at = self.clock.now() if now is None else now
        self.writer.mark(run)
        if self.subscribers:
            self.emit("status", run)

    def log(self, run: RunState, level: str, message: str, attrs: dict[str, Any] | None) -> None:
        # Text from inside a run is escaped where it enters: a printed file name holding a
        # lone surrogate stays readable in the log and never fails the commit that carries it.
        self.writer.log((run.id, self.clock.now(), level, escape_text(message),
                         escape_text(attributes_json(attrs)) if attrs else None))
        self.emit("log", run)

    def set_metadata(self, run: RunState, metadata: dict[str, Any]) -> None:
        run.metadata = metadata
        run.updated_at = self.clock.now()
        self.writer.mark(run)
        self.emit("metadata", run)

    def set_tags(self, run: RunState, tags: list[str]) -> None:
        run.tags = list(tags)
        self.writer.mark(run)
        self.emit("metadata", run)

    # ------------------------------------------------------------------ definitions

    def on_define(self, defn: TaskDefinition) -> None:
        """A cell (re)defined a task: apply its queue limits and release runs waiting for it."""
        if defn.queue is not None:
            self.dispatcher.configure(
                defn.queue_name, defn.queue.concurrency_limit, defn.queue.total
            )
        for run in self.undeployed.pop(defn.id, []):
            if run.status is S.WAITING_FOR_DEPLOY:
                if run.retrying != "restart":  # a restart's retry is decided from here
                    self._set(run, S.QUEUED)
                self.enqueue(run, front=bool(run.retrying))

    # ------------------------------------------------------------------ submission

    def submit(self, run: RunState, *, recorded: bool = False) -> RunState:
        """Register a prepared run; returns the existing run when its idempotency key matches.

        No attempt starts before the run's row is committed (docs/design.md, decision 10). A
        run whose row the caller already committed (`recorded`) is armed at once; any other is
        marked for the writer and armed when its commit lands.
        """
        if run.idempotency_key is not None:
            cached = self.idempotency.get((run.task_id, run.idempotency_key))
            if cached is not None and cached.withdrawn is None and (
                cached.idempotency_expires_at is None
                or cached.idempotency_expires_at > self.clock.now()
            ):
                return cached
            self.idempotency[(run.task_id, run.idempotency_key)] = run
        if not recorded:
            run.seq = next(self.seq)
            run.owner = self.owner
        self.track(run)
        if run.parent_id is not None:
            parent = self.active.get(run.parent_id)
            if parent is not None:
                parent.children.append(run)
        if recorded:
            run.recorded = True
            self._arm(run)
        else:
            self.writer.mark(run)
            self.writer.after_commit(partial(self._on_recorded, run), urgent=True)
        return run

    def track(self, run: RunState) -> None:
        """`run` is in flight here. A burst begins with the BURST_RUNS-th run in flight at once,
        or with BURST_RUNS arriving within CHECK_EVERY seconds (`_fast_arrivals`): while it
        lasts, full garbage collections are put off (`nbtasks._collector`)."""
        active = self.active
        active[run.id] = run
        self._arrivals += 1
        if not self._burst and self.config.defer_gc and (
                len(active) >= BURST_RUNS
                or (not self._arrivals % ARRIVALS_STRIDE and self._fast_arrivals())):
            self._burst = True
            self._quiet_since = None
            self._checked = self._arrivals
            COLLECTOR.enter(self)
            self._burst_timer = self.clock.call_at(self.clock.now() + CHECK_EVERY,
                                                   self._check_burst)

    def _fast_arrivals(self) -> bool:
        """BURST_RUNS runs or more arrived within CHECK_EVERY seconds. A stream of quick runs
        (a cell's `trigger()` loop: 10,000 a second, each done in a millisecond) keeps few in
        flight at once, yet makes as much garbage for the collector as a batch does. Asked
        every ARRIVALS_STRIDE-th arrival, so a run pays for no clock reading."""
        now = self.clock.now()
        since, count = self._window
        if now - since > CHECK_EVERY:
            self._window = (now, self._arrivals)
            return False
        return self._arrivals - count >= BURST_RUNS

    def untrack(self, run: RunState) -> None:
        """`run` is no longer in flight: final and durable, or withdrawn."""
        self.active.pop(run.id, None)

    def _check_burst(self) -> None:
        """Every CHECK_EVERY seconds of a burst: it ends once, for IDLE_GRACE, fewer than
        QUIET_RUNS runs have been in flight and fewer than QUIET_RUNS have arrived per check;
        until then the collector may give back a hold kept too long (`BurstCollector.step`)."""
        now = self.clock.now()
        arrived, self._checked = self._arrivals - self._checked, self._arrivals
        if len(self.active) < QUIET_RUNS and arrived < QUIET_RUNS:
            if self._quiet_since is None:
                self._quiet_since = now
            if now - self._quiet_since >= IDLE_GRACE:
                self._burst_timer = None
                self.end_burst()
                return
        else:
            self._quiet_since = None
        COLLECTOR.step(self)
        self._burst_timer = self.clock.call_at(now + CHECK_EVERY, self._check_burst)

    def end_burst(self) -> None:
        """Quiet, or closing: this engine no longer puts full collections off."""
        if self._burst_timer is not None:
            self._burst_timer.cancel()
            self._burst_timer = None
        self._burst = False
        COLLECTOR.leave(self)

    def _on_recorded(self, run: RunState) -> None:
        if run.recorded or run.withdrawn is not None:
            return
        run.recorded = True
        if run.status not in FINAL:  # cancelled before its commit: the row says so, nothing to start
            self._arm(run)

    def _arm(self, run: RunState) -> None:
        self.emit("created", run)
        if run.status is S.DELAYED and run.delay_until is not None:
            run.timer = self.clock.call_at(run.delay_until, partial(self.enqueue, run))
        else:
            self.enqueue(run)

    def enqueue(self, run: RunState, front: bool = False) -> None:
        if run.status in FINAL:
            return
        run.timer = None
        if run.status is S.DELAYED:
            self._set(run, S.QUEUED)
            # From the recorded due time: a delay that ran out while the kernel was down
            # starts the TTL then, not at the restart.
            run.queued_at = self.clock.now() if run.delay_until is None else run.delay_until
        if run.ttl and run.ttl_timer is None and not run.attempt_count \
                and run.status in (S.QUEUED, S.WAITING_FOR_DEPLOY):
            # From the recorded queue time, task defined or not: a TTL that ran out while the
            # kernel was down expires the run now instead of letting it start.
            deadline = run.queued_at + run.ttl
            if deadline <= self.clock.now():
                self.stop(run, S.EXPIRED, "expired")
                return
            run.ttl_timer = self.clock.call_at(deadline, partial(self._expire, run))
        defn = self.registry.get(run.task_id)
        if defn is None:
            if run.status is not S.WAITING_FOR_DEPLOY:
                self._set(run, S.WAITING_FOR_DEPLOY)
            self.undeployed.setdefault(run.task_id, []).append(run)
            return
        if run.retrying == "restart":
            self._retry_after_restart(run, defn)
            return
        if run.status is S.WAITING_FOR_DEPLOY:  # adopted from a kernel that lacked the task
            self._set(run, S.QUEUED)
        sort = (0 if front else 1, run.queued_at - run.priority, run.seq)
        run.in_queue = True
        self.dispatcher.push(run.queue, run.concurrency_key, sort, run)

    def _start(self, run: RunState) -> None:
        """The dispatcher gave `run` a slot: resume its wait, or start its next attempt.

        At once while this loop turn's budget lasts: a run that ends hands its slot to the
        next in the same step. Past it the start waits for the next turn, so a burst of
        thousands of runs made ready at once (a big batch admitted, a wide queue raised) is
        started in slices and every other callback on the loop gets a turn in between.
        """
        run.holds_slot = True
        run.in_queue = False
        if run.ttl_timer is not None:
            run.ttl_timer.cancel()
            run.ttl_timer = None
        run.starts += 1
        if self._turn_starts >= STARTS_PER_TURN:
            self._deferred.append((run, run.starts))
            return
        if not self._turn_starts:
            self.loop.call_soon(self._next_turn)
        self._turn_starts += 1
        self._go(run)

    def _go(self, run: RunState) -> None:
        if run.resume is not None:
            fut, run.resume = run.resume, None
            if not fut.done():
                fut.set_result(None)
            return
        defn = self._plain_defn(run)
        if defn is not None:
            run.attempt_task = asyncio.Task(self._plain_attempt(run, defn), loop=self.loop)
        else:
            run.attempt_task = self.loop.create_task(self._attempt(run))

    def _plain_defn(self, run: RunState) -> TaskDefinition | None:
        """The task's definition if this attempt may take the plain path, else None.

        Plain: an async body with no hooks, no middleware and no schema, on the `kernel`
        machine, with no global hook set. Most tasks are; the answer per definition is kept,
        so a burst pays for the hook checks once, not once per run.
        """
        if run.machine not in (None, "kernel") or not self.config.hooks.bare:
            return None
        defn = self.registry.get(run.task_id)
        if defn is None:
            return None
        known = self._plain.get(run.task_id)
        if known is None or known[0] is not defn:
            plain = not defn.hooks and defn.schema is None and is_async(defn.run)
            if len(self._plain) > 1024:
                self._plain.clear()
            known = self._plain[run.task_id] = (defn, plain)
        return defn if known[1] else None

    def _next_turn(self) -> None:
        """A new loop turn: the start budget is whole again; deferred starts go first."""
        self._turn_starts = 0
        deferred = self._deferred
        while deferred and self._turn_starts < STARTS_PER_TURN:
            run, starts = deferred.popleft()
            if starts != run.starts or not run.holds_slot or run.is_final:
                continue  # its slot went back while it waited (cancelled, its attempt ended)
            if not self._turn_starts:
                self.loop.call_soon(self._next_turn)
            self._turn_starts += 1
            self._go(run)

    def _release(self, run: RunState) -> None:
        if run.holds_slot:
            run.holds_slot = False
            self.dispatcher.release(run.queue, run.concurrency_key)

    # ------------------------------------------------------------------ attempts

    def retry_options(self, defn: TaskDefinition, run: RunState) -> RetryOptions | None:
        base: RetryOptions | None = self.config.retry if defn.retry is NOT_GIVEN else defn.retry  # type: ignore[assignment]
        if base is None or not run.max_attempts:
            return base
        # A trigger's max_attempts makes a copy of the policy (a pydantic model): made once
        # per policy and value, not once per attempt of each of a batch's thousand runs.
        key = (id(base), run.max_attempts)
        hit = self._retry_copies.get(key)
        if hit is None or hit[0] is not base:
            if len(self._retry_copies) > 256:
                self._retry_copies.clear()
            hit = self._retry_copies[key] = (base, effective_options(base, run.max_attempts))
        return hit[1]

    def _context(self, defn: TaskDefinition, run: RunState, number: int, now: float,
                 signal: CancelSignal) -> TaskContext:
        task_info = self._task_infos.get(defn.id)
        if task_info is None:
            task_info = self._task_infos[defn.id] = TaskInfo(defn.id)
        queue_info = self._queue_infos.get(run.queue)
        if queue_info is None:
            queue_info = self._queue_infos[run.queue] = QueueInfo(run.queue)
        return StartedContext(task_info, run, number, now, queue_info,
                              _MACHINE_INFO[run.machine or "kernel"], signal)

    def _begin(self, run: RunState, defn: TaskDefinition
               ) -> tuple[AttemptState, AttemptScope, TimerHandle | None]:
        """An attempt starts: its row, EXECUTING, its ctx, its max_duration timer.

        One clock reading serves the attempt's start, the run's start and its status change.
        """
        now = self.clock.now()
        if run.retrying == "resume" and run.attempt is not None:
            attempt = run.attempt  # interrupted by a kernel restart while waiting: re-run it
            self.log(run, "info", f"attempt {attempt.number} resumed after a kernel restart: "
                     "re-running it, its finished waits return at once", None)
        else:
            run.attempt_count += 1
            attempt = AttemptState(run.attempt_count, now, run.machine or "kernel", run.queue)
            run.replay = None
        if run.started_at is None:
            run.started_at = now
        run.retrying = ""
        run.wait_seq = 0
        if run.status is S.REATTEMPTING:
            run.delay_until = None
        run.attempt = attempt
        self.writer.mark_attempt(run, attempt)
        self._set(run, S.EXECUTING, now)
        signal = run.signal = CancelSignal()
        ctx = self._context(defn, run, attempt.number, attempt.started_at, signal)
        scope = AttemptScope(ctx, RunSink(self, run), run.metadata, run.tags, self.engine)
        limit = run.max_duration or defn.max_duration
        timer = self.clock.call_at(now + limit, partial(self._time_out, run)) if limit else None
        return attempt, scope, timer

    async def _attempt(self, run: RunState) -> None:
        defn = self.registry.require(run.task_id)
        machine = run.machine or "kernel"
        attempt, scope, timer = self._begin(run, defn)
        plan = AttemptPlan(defn, run.payload_json, scope.ctx, self.retry_options(defn, run),
                           self.config.hooks, self.clock.now)
        try:
            outcome = await self.executor_for(machine).execute(plan, scope)
        except asyncio.CancelledError:
            if run.is_final:
                return  # cancelled or timed out: the run already ended
            raise
        except Exception as exc:  # the executor itself failed: a system failure, retried
            outcome = self._system_failure(defn, run, attempt, exc)
        finally:
            if timer is not None:
                timer.cancel()
        if run.is_final:
            self._late(run)
            return
        self.complete_attempt(run, attempt, outcome)

    async def _plain_attempt(self, run: RunState, defn: TaskDefinition) -> None:
        """`_attempt` for a plain task (see `_plain_defn`).

        The same lifecycle as `nbtasks._lifecycle` gives a task without hooks (its failure
        path is that module's own), minus what such a task doesn't need: no plan, no
        executor, no hook lookups, no outcome object on success, no coroutine per layer. The
        body's steps are timed for the loop-block warning as any async body's are.

        A coroutine, not a bare generator: Python 3.12's asyncio refuses a generator as a
        Task's coroutine (TypeError), and `await` delegates as directly as `yield from` did.
        """
        attempt, scope, timer = self._begin(run, defn)
        token = CURRENT.set(scope)
        outcome: AttemptOutcome | None = None  # None: succeeded, with `output_json`
        output_json = "null"
        try:
            payload = loads(run.payload_json)
            try:
                body = defn.run(payload, scope.ctx)
                watch = self.watch
                if watch.threshold > 0:
                    output = await timed_steps(body, watch, scope)
                else:
                    output = await body
                output_json = "null" if output is None else output_json_of(defn.id, output)
            except Exception as err:
                plan = AttemptPlan(defn, run.payload_json, scope.ctx,
                                   self.retry_options(defn, run), self.config.hooks,
                                   self.clock.now)
                outcome = await failed(plan, scope, self._call_sync, payload, err)
        except asyncio.CancelledError:
            if run.status in FINAL:
                return  # cancelled or timed out: the run already ended
            raise
        except Exception as exc:  # the engine's own part failed: a system failure, retried
            outcome = self._system_failure(defn, run, attempt, exc)
        finally:
            CURRENT.reset(token)
            flush_partial_lines(scope)
            if timer is not None:
                timer.cancel()
        if run.status in FINAL:
            self._late(run)
            return
        if outcome is None:
            self._succeed(run, attempt, output_json)
        else:
            self.complete_attempt(run, attempt, outcome)

    def _call_sync(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """How the plain path's failure handling runs a sync global hook: as the kernel
        machine's executor does, on a thread of its own."""
        return self.executor_for("kernel").threads.run(fn, *args)  # type: ignore[attr-defined, no-any-return]

    def _system_failure(self, defn: TaskDefinition, run: RunState, attempt: AttemptState,
                        exc: Exception) -> AttemptOutcome:
        decision = decide(self.retry_options(defn, run), attempt.number, exc, self.clock.now(),
                          None, machine=attempt.machine)
        return AttemptOutcome(False, error=error_record(exc), retry_at=decision.retry_at,
                              status=S.SYSTEM_FAILURE)

    def _late(self, run: RunState) -> None:
        self.late_results += 1
        self.log(run, "warn", "late result discarded: the run had already ended", None)

    def _end_attempt(self, run: RunState, attempt: AttemptState, ok: bool,
                     error: dict[str, Any] | None) -> float:
        """The attempt's row is final and its slot goes back; returns the clock reading, which
        also stamps the run's own change."""
        now = self.clock.now()
        attempt.finished_at = now
        attempt.status = "COMPLETED" if ok else "FAILED"
        attempt.error = error
        self.writer.mark_attempt(run, attempt)
        run.attempt = None
        run.attempt_task = None
        run.signal = None  # the attempt is over: nothing left to abort
        if run.status is S.WAITING:
            self._drop_abandoned_waits(run)
        self._release(run)
        return now

    def _succeed(self, run: RunState, attempt: AttemptState, output_json: str | None) -> None:
        now = self._end_attempt(run, attempt, True, None)
        self._finish(run, S.COMPLETED, output_json=output_json, now=now)

    def complete_attempt(self, run: RunState, attempt: AttemptState, outcome: AttemptOutcome) -> None:
        if outcome.ok:
            self._succeed(run, attempt, outcome.output_json)
            return
        now = self._end_attempt(run, attempt, False, outcome.error)
        if outcome.retry_at is not None:
            run.error = outcome.error
            if outcome.machine:
                run.machine = outcome.machine
            run.delay_until = outcome.retry_at
            self._set(run, S.REATTEMPTING, now)
            run.timer = self.clock.call_at(outcome.retry_at, partial(self.enqueue, run, True))
        else:
            self._finish(run, outcome.status, error=outcome.error, now=now)

    def reschedule(self, run: RunState, at: float | None) -> None:
        """Move a DELAYED run's start time (None: start now)."""
        if run.timer is not None:
            run.timer.cancel()
        run.delay_until = at
        run.updated_at = self.clock.now()
        self.writer.mark(run)
        self.emit("status", run)
        if at is None:
            self.enqueue(run)
        else:
            run.queued_at = at
            run.timer = self.clock.call_at(at, partial(self.enqueue, run))

    # ------------------------------------------------------------------ endings

    def _finish(self, run: RunState, status: RunStatus, *, output_json: str | None = None,
                error: dict[str, Any] | None = None, now: float | None = None) -> None:
        self._set(run, status, now)
        run.finished_at = run.updated_at
        run.output_json = output_json
        if status is not S.COMPLETED:
            run.error = error if error is not None else run.error
        else:
            run.error = None
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        if run.ttl_timer is not None:
            run.ttl_timer.cancel()
            run.ttl_timer = None
        if run.in_queue:
            self.dispatcher.remove(run.queue, run.concurrency_key, run)
            run.in_queue = False
        self._release(run)
        if self.undeployed:
            waiting = self.undeployed.get(run.task_id)
            if waiting and run in waiting:
                waiting.remove(run)
        self.writer.after_commit(partial(self._durable, run), urgent=run._waiters is not None)

    def _durable(self, run: RunState) -> None:
        """The final state is on disk: now waiters may hear of it (docs/design.md, durability).

        Unless the store was lost (withdrawn): then nothing is on disk, and they hear that."""
        run.durable = run.withdrawn is None
        if not run.durable:
            remember(self, run)
        # Out of the active set before anyone hears: a waiter on another thread may look at
        # the engine the moment it is told.
        self.untrack(run)
        if run.idempotency_key is not None:
            self.idempotency.pop((run.task_id, run.idempotency_key), None)
        run._children = None
        waiters, run._waiters = run._waiters, None
        if waiters:
            for fn in waiters:
                fn(run)

    def stop(self, run: RunState, status: RunStatus, reason: str,
             error: dict[str, Any] | None = None) -> bool:
        """End a non-final run now: cancel, max_duration, TTL. Children of a cancel go too.

        The tree of a cancel is walked with a list, not recursion: a `trigger_and_wait`
        chain may be thousands deep, deeper than Python's recursion limit.
        """
        if not self._stop_one(run, status, reason, error):
            return False
        if status is S.CANCELED:
            pending = list(reversed(run._children or ()))
            while pending:
                child = pending.pop()
                if self._stop_one(child, S.CANCELED, reason, None):
                    pending.extend(reversed(child._children or ()))
        return True

    def _stop_one(self, run: RunState, status: RunStatus, reason: str,
                  error: dict[str, Any] | None) -> bool:
        if run.is_final:
            return False
        if run.signal is not None:
            run.signal.abort(reason)
        attempt = run.attempt
        if attempt is not None and attempt.finished_at is None:
            attempt.finished_at = self.clock.now()
            attempt.status = "CANCELED" if status is S.CANCELED else "FAILED"
            attempt.error = error
            self.writer.mark_attempt(run, attempt)
        task = run.attempt_task
        if status is S.CANCELED and run.status in (S.EXECUTING, S.WAITING):
            self.log(run, "info", "run cancelled while executing", None)
        self._finish(run, status, error=error)
        if task is not None and not task.done():
            task.cancel()
        for waiting in self.blocking.pop(run.id, set()):
            waiting.cancel()
        return True

    def _time_out(self, run: RunState) -> None:
        if run.status in (S.EXECUTING, S.WAITING):
            limit = run.max_duration or self.registry.require(run.task_id).max_duration
            err = MaxDurationExceededError(f"run exceeded its max_duration of {limit:g}s")
            self.stop(run, S.TIMED_OUT, "timeout", error_record(err))

    def _expire(self, run: RunState) -> None:
        run.ttl_timer = None
        if run.status in (S.QUEUED, S.WAITING_FOR_DEPLOY):
            self.stop(run, S.EXPIRED, "expired")

    # ------------------------------------------------------------------ waits

    async def park(self, run: RunState, awaitable: Awaitable[T]) -> T:
        """Wait inside a run: give the slot back, await, then queue for a slot (ahead of fresh runs).

        Parallel waits (asyncio.gather) nest: the slot goes at the first and comes back after
        the last.
        """
        task = asyncio.current_task()
        if task is None or task is run.attempt_task:
            return await self._park(run, awaitable)
        blocking = self.blocking.setdefault(run.id, set())
        blocking.add(task)
        try:
            return await self._park(run, awaitable)
        finally:
            blocking.discard(task)
            if not blocking and self.blocking.get(run.id) is blocking:
                del self.blocking[run.id]

    async def _park(self, run: RunState, awaitable: Awaitable[T]) -> T:
        if run.wait_depth == 0:
            self._set(run, S.WAITING)
            self._release(run)
        run.wait_depth += 1
        try:
            result = await awaitable
        except asyncio.CancelledError:
            # Not a cancel of the run (that ends it first): the body gave up on this wait, e.g.
            # asyncio.wait_for timed out. It goes on executing, so it needs its slot back.
            run.wait_depth -= 1
            if run.wait_depth == 0 and run.status is S.WAITING:
                await self._take_slot_back(run)
            raise
        run.wait_depth -= 1
        if run.wait_depth == 0 and run.status is S.WAITING:
            await self._take_slot_back(run)
        return result

    def _drop_abandoned_waits(self, run: RunState) -> None:
        """The attempt ended while waits it gave up on were still parked (a sync body whose
        handle.wait(timeout) ran out, a detached wait task): drop them, it is no longer waiting."""
        for waiting in self.blocking.pop(run.id, set()):
            waiting.cancel()
        if run.in_queue:
            self.dispatcher.remove(run.queue, run.concurrency_key, run)
            run.in_queue = False
        if run.resume is not None:
            run.resume.cancel()
            run.resume = None
        self._set(run, S.EXECUTING)

    async def _take_slot_back(self, run: RunState) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        run.resume = fut
        run.in_queue = True
        self.dispatcher.push(run.queue, run.concurrency_key, (0, self.clock.now(), run.seq), run)
        await fut
        self._set(run, S.EXECUTING)

    def on_final(self, run_id: str, callback: Callable[[RunState], None]) -> bool:
        """Call back once `run_id` is final and durable. False if it is not active here."""
        run = self.active.get(run_id)
        if run is None:
            gone = self.withdrawn.get(run_id)
            if gone is None:
                return False
            callback(gone)  # never recorded: the waiter gets the StoreError, not "not found"
            return True
        if run.durable:
            return False
        if run.withdrawn is not None:  # its store was lost: it can never be final and durable
            callback(run)
            return True
        run.waiters.append(callback)
        if run.is_final:  # its end is marked, not yet committed: somebody waits for it now
            self.writer.hurry()
        return True

    # ------------------------------------------------------------------ restart recovery

    def _retry_after_restart(self, run: RunState, defn: TaskDefinition) -> None:
        """The task of a run whose attempt died with its kernel is defined: apply its policy."""
        run.retrying = ""
        err = KernelRestartError("the kernel stopped while the attempt was executing")
        decision = decide(self.retry_options(defn, run), run.attempt_count, err,
                          self.clock.now(), None, machine=run.machine)
        if decision.retry_at is None:
            self._finish(run, S.FAILED, error=run.error)
            return
        if run.status is not S.REATTEMPTING:
            self._set(run, S.REATTEMPTING)
        run.delay_until = decision.retry_at
        self.writer.mark(run)
        run.timer = self.clock.call_at(decision.retry_at, partial(self.enqueue, run, True))
