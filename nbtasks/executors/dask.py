"""Machine presets on a Dask cluster: the way past one machine.

>>> from distributed import Client                                        # doctest: +SKIP
>>> nbtasks.configure(executor=nbtasks.executors.DaskExecutor(Client("tcp://scheduler:8786")))

Runs whose machine is a preset go to the cluster as Dask tasks; the scheduler, queues,
retries and the store stay in the kernel. Each attempt's whole lifecycle (hooks and run) runs
on a Dask worker, like on a pool worker, and talks to the kernel through Dask itself:

- the attempt is the submitted task; logs, metadata, tags, requests (trigger_and_wait, waits,
  runs.*) and at last the outcome go up as events on a topic of the scheduler, batched per turn
  of the worker's loop. A run that doesn't log or ask for anything costs one `submit` and one
  event: its result is never fetched from the worker (that would be another round trip), it is
  only the fallback when Dask itself fails the task;
- any client can post on a topic, so what goes there is JSON only, sealed with a secret that
  travels only inside this kernel's own tasks (see `_dask_wire`): nothing read from the topic
  is unpickled, and a forged message is dropped. Replies come back down with `Client.run` on
  the asking worker.

Preset sizes map to Dask worker resources named `CPU` (vCPUs) and `MEMORY` (bytes, with a
preset's GB meaning 10**9 bytes, as Dask's own "8GB" does). `worker_resources("large-1x")`
gives the worker option for a preset, and `python -m nbtasks.executors.dask large-1x` prints
it: start workers with `dask worker tcp://scheduler:8786 --nthreads 4 --resources "CPU=4
MEMORY=8e9"` and a `large-1x` run only goes to a worker that has 4 CPU and 8 GB free. When no
worker declares these resources, presets are not enforced (the run log says so once); when no
worker is big enough, the attempt fails at once rather than queue forever.

A worker that dies mid-attempt fails the attempt with WorkerCrashedError, and the retry policy
applies: the kernel hears of it from the scheduler's "all" events (it subscribes to that topic),
and believes it only once the scheduler itself confirms the worker is gone and that the task
was running there (anyone can post a "remove-worker" event).
Dask itself reschedules a dead worker's tasks (`distributed.scheduler.allowed-failures`, 3 by
default); the kernel cancels that copy and ignores it. Set allowed-failures to 0 on clusters
that run nbtasks so no copy ever starts.
Cancel and max_duration set `ctx.signal` and cancel an async body on its worker; a sync body
can't be stopped from outside its thread (as in the kernel) and its result is dropped.
Per-run memory limits are Dask's own (the nanny's memory_limit), not the preset's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

try:
    import distributed
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "DaskExecutor needs Dask's distributed scheduler: pip install nbtasks[dask]") from exc

from .._context import AttemptScope
from .._errors import ConfigurationError, TaskRunError, WorkerCrashedError
from .._lifecycle import AttemptOutcome, AttemptPlan
from .._models import MACHINES, MachinePreset, check_machine
from .._runtime import to_loop
from ._dask_wire import Inbox, loads_args
from ._dask_worker import cancel_on_dask, deliver, run_on_dask
from ._serve import serve
from ._wire import dump_job, failed_outcome, outcome_from

log = logging.getLogger("nbtasks.machines")

#: How long a fetched view of the cluster's workers and their resources is trusted.
CLUSTER_INFO_TTL = 10.0


def worker_resources(preset: str) -> str:
    """The `dask worker --resources` value for a preset's machine: "CPU=4 MEMORY=8e9"."""
    machine = MACHINES[check_machine(preset, where="worker_resources")]
    if machine.cpu == 0:
        raise ConfigurationError("worker_resources: the kernel machine runs in the kernel, "
                                 "not on a Dask worker")
    return f"CPU={machine.cpu:g} MEMORY={machine.memory:g}e9"


class DaskExecutor:
    """Runs preset attempts on the Dask cluster of `client` (a synchronous distributed.Client)."""

    name = "dask"

    def __init__(self, client: distributed.Client) -> None:
        if getattr(client, "asynchronous", False):
            raise ConfigurationError("DaskExecutor needs a regular (synchronous) Client")
        self.client = client
        self.topic = f"nbtasks-{uuid.uuid4().hex[:12]}"
        self.secret = os.urandom(32)
        self._inbox = Inbox(self.secret)
        self._attempts: dict[str, _Attempt] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cluster: tuple[float, list[dict[str, Any]]] | None = None
        self._said: set[str] = set()

    def __repr__(self) -> str:
        address = getattr(self.client.scheduler, "address", "?")
        return f"<DaskExecutor {address}: {len(self._attempts)} running>"

    async def start(self) -> None:
        self._subscribe()

    def _subscribe(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.client.subscribe_topic(self.topic, self._on_event)  # type: ignore[no-untyped-call]
            # The scheduler's own events say when a worker leaves, with what it was running.
            self.client.subscribe_topic("all", self._on_cluster_event)  # type: ignore[no-untyped-call]

    def _on_event(self, event: tuple[float, Any]) -> None:
        """On the client's thread: open a batch from our workers, hand it to the engine loop."""
        messages = self._inbox.open(event[1]) if self._loop is not None else None
        if messages and self._loop is not None:
            for message in messages:
                if message[0] == "done" and (attempt := self._attempts.get(message[1])):
                    # Before Dask's done-callback runs (the scheduler sends this event first,
                    # and the client handles both in order): it needn't fetch the result.
                    attempt.outcome_sent = True
            to_loop(self._loop, self._on_messages, messages)

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if (self._loop is not None and isinstance(message, dict)
                and message.get("action") == "remove-worker"):
            worker, tasks = message.get("worker"), message.get("processing-tasks")
            keys = [k for k in tasks or () if isinstance(k, str) and k in self._attempts]
            if keys and isinstance(worker, str):
                to_loop(self._loop, self._check_loss, worker, keys)

    def _check_loss(self, worker: str, keys: list[str]) -> None:
        """On the loop: hold these attempts' outcomes while the scheduler confirms the loss.

        When a worker dies, Dask may run the task again elsewhere, and that copy's outcome can
        come before the scheduler's answer: it must not count as the attempt's."""
        attempts = [a for k in keys if (a := self._attempts.get(k)) is not None]
        for attempt in attempts:
            attempt.checking += 1

        def confirm() -> None:
            try:
                lost = set(self.client.run_on_scheduler(  # type: ignore[no-untyped-call]
                    _scheduler_lost(), worker, keys))
            except Exception:  # the scheduler is unreachable: Dask's own errors will say so
                lost = set()
            if len(lost) < len(keys):
                log.warning("ignored a remove-worker event for %s: the scheduler says that "
                            "worker is still there, or wasn't running %d of these attempts "
                            "(another client of the scheduler posted it?)",
                            worker, len(keys) - len(lost))
            if self._loop is not None:
                to_loop(self._loop, self._checked, attempts, lost, worker)

        _in_thread(confirm)

    def _checked(self, attempts: list[_Attempt], lost: set[str], worker: str) -> None:
        for attempt in attempts:
            attempt.checking -= 1
            if attempt.key in lost:
                attempt.lost(worker)
            elif attempt.checking == 0 and attempt.held is not None:
                attempt._settle(attempt.held)

    # ------------------------------------------------------------------ cluster resources

    async def _workers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._cluster is None or now - self._cluster[0] > CLUSTER_INFO_TTL:
            info = await asyncio.to_thread(self.client.scheduler_info, -1)
            self._cluster = (now, list(info.get("workers", {}).values()))
        return self._cluster[1]

    async def resources_for(self, preset: MachinePreset) -> dict[str, float] | str | None:
        """The resources to ask for, None when the cluster declares none, or why it can't fit."""
        workers = await self._workers()
        declared = {name for w in workers for name in (w.get("resources") or {})}
        want = {"CPU": preset.cpu, "MEMORY": float(preset.memory_bytes)}
        use = {k: v for k, v in want.items() if k in declared}
        if not use:
            return None
        if workers and not any(all((w.get("resources") or {}).get(k, 0) >= v
                                   for k, v in use.items()) for w in workers):
            return (f"no worker of the Dask cluster has the resources of the {preset.name} "
                    f"machine ({preset.cpu:g} CPU, {preset.memory:g} GB as MEMORY bytes): start "
                    f"one with --resources \"{worker_resources(preset.name)}\"")
        return use

    # ------------------------------------------------------------------ attempts

    async def execute(self, plan: AttemptPlan, scope: AttemptScope) -> AttemptOutcome:
        self._subscribe()
        preset = MACHINES[plan.ctx.machine.name]
        try:
            job = dump_job(plan, scope)
        except Exception as exc:
            return failed_outcome(plan, TaskRunError(
                f"task {plan.defn.id!r} can't be sent to the Dask cluster: "
                f"{type(exc).__name__}: {exc}"), retry=False)
        resources = await self.resources_for(preset)
        if isinstance(resources, str):
            return failed_outcome(plan, TaskRunError(resources), retry=False)
        if resources is None and "resources" not in self._said:
            self._said.add("resources")
            scope.sink.log("warn", "the Dask workers declare no CPU/MEMORY resources, so "
                           "machine presets are not enforced on the cluster", None)
        loop = asyncio.get_running_loop()
        key = f"nbtasks-{plan.ctx.run.id}-{plan.ctx.attempt.number}-{uuid.uuid4().hex[:8]}"
        attempt = _Attempt(self, key, plan, scope, loop.create_future())
        self._attempts[key] = attempt
        future = self.client.submit(run_on_dask, job, key, self.topic, self.secret, os.getpid(),
                                    key=key, pure=False, resources=resources)
        attempt.future = future
        future.add_done_callback(attempt.finished)  # type: ignore[no-untyped-call]
        try:
            return await attempt.done
        except asyncio.CancelledError:
            attempt.stop(plan.ctx.signal.reason or "cancel")
            raise
        finally:
            self._attempts.pop(key, None)
            for task in attempt.calls.values():
                task.cancel()

    def _on_messages(self, messages: list[list[Any]]) -> None:
        for message in messages:
            attempt = self._attempts.get(message[1])
            if attempt is not None:
                try:
                    attempt.on_message(message)
                except (ValueError, TypeError, IndexError, KeyError) as exc:  # malformed: say so
                    log.warning("dropped a malformed message from a Dask worker: %s", exc)

    async def close(self) -> None:
        for attempt in list(self._attempts.values()):
            attempt.stop("cancel")
        if self._loop is not None:
            for topic in (self.topic, "all"):
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(topic)  # type: ignore[no-untyped-call]


class _Attempt:
    """The kernel's side of one attempt on the cluster."""

    def __init__(self, executor: DaskExecutor, key: str, plan: AttemptPlan, scope: AttemptScope,
                 done: asyncio.Future[AttemptOutcome]) -> None:
        self.executor = executor
        self.client = executor.client
        self.key = key
        self.plan = plan
        self.scope = scope
        self.done = done
        self.loop = done.get_loop()
        self.future: Any = None
        self.address: str | None = None  # the worker it asked something from, if it did
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.outcome_sent = False  # its "done" event arrived (set on the client's thread)
        self.checking = 0  # reports of its worker's death the scheduler hasn't confirmed yet
        self.held: AttemptOutcome | None = None  # an outcome that came meanwhile

    def finished(self, future: Any) -> None:
        """Dask's callback thread: if the outcome didn't come as an event, fetch it."""
        if self.done.done() or (self.outcome_sent and future.status == "finished"):
            return
        try:
            message = future.result()
        except distributed.client.FutureCancelledError:
            return
        except distributed.KilledWorker as exc:
            outcome = failed_outcome(self.plan, WorkerCrashedError(
                f"the Dask worker running this attempt died ({exc})"))
        except Exception as exc:
            outcome = failed_outcome(self.plan, TaskRunError(
                f"the Dask task failed: {type(exc).__name__}: {exc}"))
        else:
            outcome = self._outcome(message)
        to_loop(self.loop, self._settle, outcome)

    def _outcome(self, message: dict[str, Any]) -> AttemptOutcome:
        if not isinstance(message, dict):
            return failed_outcome(self.plan, TaskRunError("the Dask task returned no outcome"))
        if "cancelled" in message:  # the run ended first; this is never used
            return failed_outcome(self.plan, TaskRunError("cancelled"), retry=False)
        if "load_error" in message:
            return failed_outcome(self.plan, TaskRunError(message["load_error"]["message"]))
        return outcome_from(message, self.plan)

    def _settle(self, outcome: AttemptOutcome) -> None:
        if self.checking:
            self.held = outcome
        elif not self.done.done():
            self.done.set_result(outcome)

    def lost(self, worker: str) -> None:
        """Its worker left the cluster: the attempt failed, and a copy Dask restarts is dropped."""
        if not self.done.done():
            self.done.set_result(failed_outcome(self.plan, WorkerCrashedError(
                f"the Dask worker {worker} died while running this attempt")))
            self.stop("cancel")

    def stop(self, reason: str) -> None:
        """Cancel it on its worker (ctx.signal, the async body) and drop the Dask task."""
        address, future = self.address, self.future

        def go() -> None:
            where = address
            if where is None:  # it never asked for anything: the scheduler knows where it runs
                with contextlib.suppress(Exception):
                    where = self.client.run_on_scheduler(  # type: ignore[no-untyped-call]
                        _scheduler_where(), self.key)
            if where is not None:
                with contextlib.suppress(Exception):
                    self.client.run(cancel_on_dask, self.key, reason, workers=[where])
            if future is not None:
                with contextlib.suppress(Exception):
                    future.cancel()

        _in_thread(go)

    def _run_on_worker(self, fn: Any, *args: Any, address: str) -> None:
        """`Client.run` on one worker; failing means the worker died, and the attempt with it."""

        def go() -> None:
            with contextlib.suppress(Exception):
                self.client.run(fn, *args, workers=[address])

        _in_thread(go)

    def on_message(self, message: list[Any]) -> None:
        """One message of a batch our own worker sealed (JSON: see `_dask_wire`)."""
        kind, scope = message[0], self.scope
        if self.done.done():
            return  # a copy Dask restarted after its worker died, or a late line
        if kind == "done":
            self._settle(self._outcome(message[2]))
        elif kind == "log":
            _, _, level, text, attributes = message
            scope.sink.log(str(level), str(text), attributes if isinstance(attributes, dict)
                           else None)
        elif kind == "metadata" and isinstance(message[2], dict):
            scope.metadata = message[2]
            scope.sink.metadata_changed(message[2])
        elif kind == "tags" and isinstance(message[2], list):
            scope.tags = [str(t) for t in message[2]]
            scope.sink.tags_changed(scope.tags)
        elif kind == "call":
            _, _, rid, method, args, address = message
            if not (isinstance(rid, int) and isinstance(method, str) and isinstance(address, str)):
                raise ValueError("a request needs an id, a method and the worker's address")
            self.address = address
            self.calls[rid] = self.loop.create_task(
                self._answer(rid, method, loads_args(args), address))
        elif kind == "cancel" and (task := self.calls.pop(message[2], None)) is not None:
            task.cancel()

    async def _answer(self, rid: int, method: str, args: tuple[Any, ...], address: str) -> None:
        try:
            ok, value = True, await serve(self.scope, method, args)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            ok, value = False, exc
        try:
            blob = pickle.dumps(value)
        except Exception as exc:
            ok, blob = False, pickle.dumps(TaskRunError(f"the answer can't be sent: {exc}"))
        self._run_on_worker(deliver, self.key, rid, ok, blob, address=address)


def _scheduler_lost() -> Callable[..., list[str]]:
    """Runs on the scheduler: which of `keys` were running on `worker` when it left.

    Built in a closure so that Dask sends it by value: the scheduler needn't have nbtasks.
    `suspicious` is the scheduler's count of workers that died while running the task.
    """

    def lost(worker: str, keys: list[str], dask_scheduler: Any) -> list[str]:
        if worker in dask_scheduler.workers:
            return []
        tasks = dask_scheduler.tasks
        return [k for k in keys if k in tasks and tasks[k].suspicious > 0]

    return lost


def _scheduler_where() -> Callable[..., str | None]:
    """Runs on the scheduler: the address of the worker running `key`, if one is."""

    def where(key: str, dask_scheduler: Any) -> str | None:
        task = dask_scheduler.tasks.get(key)
        worker = None if task is None else task.processing_on
        return None if worker is None else str(worker.address)

    return where


def _in_thread(fn: Any) -> None:
    """Client calls block until the cluster answers: never on the engine loop."""
    threading.Thread(target=fn, name="nbtasks-dask-call", daemon=True).start()


if __name__ == "__main__":  # python -m nbtasks.executors.dask large-1x
    try:
        print(worker_resources(sys.argv[1] if len(sys.argv) > 1 else ""))
    except ConfigurationError as exc:
        sys.exit(f"usage: python -m nbtasks.executors.dask PRESET\n{exc}")
