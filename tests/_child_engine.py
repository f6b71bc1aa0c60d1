"""A kernel stand-in for the restart tests: an engine in its own process, on a given store file.

    python tests/_child_engine.py kill  DB SEED N     # recover, trigger N runs, work until killed
    python tests/_child_engine.py stream DB SEED N    # the same with a trigger() loop of N runs
    python tests/_child_engine.py drain DB            # recover, run every run to a final status
    python tests/_child_engine.py mine  DB TAG N T    # two kernels: run N of task TAG, read T
    python tests/_child_engine.py state DB            # one run in each state, on a manual clock
    python tests/_child_engine.py crash DB HOW        # trigger, report, die at once (HOW: exit,
                                                      # kill or segv)

It prints a line of JSON after each trigger returns (so the test knows those runs are durable),
`ready` once the engine has recovered the file, and in `drain` mode the figures at the end.
The tests SIGKILL it at random points; it writes nothing to the store but through the engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

import nbtasks
from nbtasks import Engine
from nbtasks._tasks import Registry, TaskFactory

RETRY = {"max_attempts": 100, "min_timeout_in_ms": 10, "max_timeout_in_ms": 50, "factor": 1.5,
         "randomize": False}


def say(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def define(registry: Registry) -> None:
    """The tasks a kill-test kernel serves. `late` is defined after the engine starts."""
    task = TaskFactory(registry)

    async def work(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
        await asyncio.sleep(p["ms"] / 1000)
        if ctx.attempt.number <= p.get("fail", 0):
            raise ValueError(f"planned failure of attempt {ctx.attempt.number}")
        return {"i": p["i"], "attempt": ctx.attempt.number}

    def sync_work(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
        time.sleep(p["ms"] / 1000)
        return {"i": p["i"], "pid": os.getpid()}

    def complete(p: dict[str, Any], ctx: Any) -> bool:
        time.sleep(p["ms"] / 1000)
        return nbtasks.wait.complete_token(p["token"], {"i": p["i"]})

    work_task = task(id="work", run=work, retry=RETRY)
    task(id="sync-work", run=sync_work, retry=RETRY)
    completer = task(id="complete", run=complete, retry=RETRY)

    async def parent(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
        await nbtasks.wait.for_(seconds=p["wait"])
        child = await work_task.trigger_and_wait({"i": p["i"], "ms": p["ms"]})
        token = nbtasks.wait.create_token(timeout="1h")
        await completer.trigger_async({"i": p["i"], "token": token.id, "ms": p["ms"]},
                                      idempotency_key=token.id)
        got = await nbtasks.wait.for_token(token)
        return {"i": p["i"], "child": child.unwrap(), "token": got.unwrap()}

    task(id="parent", run=parent, retry=RETRY)


def define_late(registry: Registry) -> None:
    async def late(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
        await asyncio.sleep(p["ms"] / 1000)
        return {"i": p["i"]}

    TaskFactory(registry).__call__(id="late", run=late, retry=RETRY)


def start(db: str, **options: Any) -> tuple[Engine, Registry]:
    registry = Registry()
    define(registry)
    eng = Engine(store=db, registry=registry, concurrency_limit=50, **options)
    define_late(registry)
    return eng, registry


def kill_mode(db: str, seed: int, n: int) -> None:
    rng = random.Random(seed)
    _eng, registry = start(db)
    say("ready")
    tasks = {tid: nbtasks.Task(registry.require(tid), registry)
             for tid in ("work", "sync-work", "parent", "late")}
    for start_i in range(0, n, 250):
        payloads: dict[str, list[dict[str, Any]]] = {}
        for _ in range(min(250, n - start_i)):
            kind = rng.choices(["work", "sync-work", "parent", "late"], [70, 10, 10, 10])[0]
            i = rng.randrange(10**9)
            p: dict[str, Any] = {"i": i, "ms": rng.randint(50, 400)}
            if kind == "work":
                p["fail"] = rng.choice([0, 0, 0, 1, 2])
            elif kind == "parent":
                p["wait"] = rng.uniform(0.5, 2.5)
            payloads.setdefault(kind, []).append(p)
        ids = []
        for kind, items in payloads.items():
            delay = {"delay": 0.3} if kind == "late" else {}
            ids += [h.id for h in tasks[kind].batch_trigger(items, **delay)]
        say(ids)
    time.sleep(3600)  # keep executing until killed


def stream_mode(db: str, seed: int, n: int) -> None:
    """Recover, then a `trigger()` loop of N runs, as a cell writes it: the engine takes them as
    a stream (longer lingers, and the writer's longer gap between commits). Every 50 calls it
    prints the ids whose trigger() returned, and whether the mailbox was streaming then."""
    rng = random.Random(seed)
    eng, registry = start(db)
    say("ready")
    work = nbtasks.Task(registry.require("work"), registry)
    ids: list[str] = []
    for _ in range(n):
        ids.append(work.trigger({"i": rng.randrange(10**9), "ms": rng.randint(1, 30)}).id)
        if len(ids) == 50:
            say({"ids": ids, "streaming": eng.runtime.inbox.streaming()})
            ids = []
    say({"ids": ids, "streaming": eng.runtime.inbox.streaming()})
    time.sleep(3600)  # keep executing until killed


def drain_mode(db: str) -> None:
    t0 = time.perf_counter()
    eng, _ = start(db)
    active = list(eng.scheduler.active)
    results = eng.wait_results(active, timeout=90)
    say({"drained": len(active), "ok": sum(r.ok for r in results),
         "seconds": round(time.perf_counter() - t0, 2)})
    eng.close()


def mine_mode(db: str, tag: str, n: int, total: int) -> None:
    """Two kernels: run N runs of this kernel's own task; then, once the other kernel's runs
    are done too (`total` in all), report what this kernel can read."""
    registry = Registry()

    def own(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"i": p["i"], "pid": os.getpid(), "tag": tag}

    TaskFactory(registry)(id=f"own-{tag}", run=own)
    eng = Engine(store=db, registry=registry)
    own_task = nbtasks.Task(registry.require(f"own-{tag}"), registry)
    handles = []
    for start_i in range(0, n, 100):
        batch = own_task.batch_trigger([{"i": i} for i in range(start_i, min(n, start_i + 100))])
        handles += list(batch)
        for i in range(5):  # plain triggers too: each waits for its own commit
            handles.append(own_task.trigger({"i": n + start_i + i}))
    results = [h.wait(timeout=60) for h in handles]
    deadline = time.monotonic() + 60
    while eng.runs.count(status="COMPLETED") < total and time.monotonic() < deadline:
        time.sleep(0.05)  # the other kernel's progress shows only in the file
    frame = eng.runs.to_dataframe()
    say({"ran": len(results), "ok": sum(r.ok for r in results), "owner": eng.owner,
         "pid": os.getpid(), "seen": len(frame),
         "seen_tasks": sorted(frame.task_id.unique().tolist()),
         "adopted": len(eng.scheduler.active)})
    eng.close()


def crash_mode(db: str, how: str) -> None:
    """Trigger runs one call at a time, print each id once trigger() returned, then die before
    anything else happens: no close, no atexit, no flush of anything but stdout."""
    import ctypes
    import signal

    registry = Registry()

    async def hang(p: Any, ctx: Any) -> None:
        await asyncio.Event().wait()

    TaskFactory(registry)(id="hang", run=hang)
    TaskFactory(registry)(id="quick", run=lambda p, ctx: p)
    Engine(store=db, registry=registry)
    hang_task = nbtasks.Task(registry.require("hang"), registry)
    quick_task = nbtasks.Task(registry.require("quick"), registry)
    for i in range(20):
        say([hang_task.trigger({"i": i}).id, quick_task.trigger({"i": i}).id])
    say([h.id for h in quick_task.batch_trigger([{"i": i} for i in range(100)])])

    async def burst() -> list[str]:  # concurrent trigger_async calls share one commit
        handles = await asyncio.gather(*(quick_task.trigger_async({"i": i}) for i in range(50)))
        return [h.id for h in handles]

    say(asyncio.run(burst()))
    if how == "exit":
        os._exit(3)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        ctypes.string_at(0)  # a segmentation fault: the interpreter itself crashes


T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC, the manual clock's start in `state` mode


def state_tasks(registry: Registry, *, blocking: bool) -> None:
    """The `state` scenario's tasks. In the child they block forever; after the restart the
    test defines them again (blocking=False) and they finish."""
    task = TaskFactory(registry)
    forever = asyncio.Event()

    async def body(p: Any, ctx: Any) -> Any:
        if blocking:
            await forever.wait()
        return {"attempt": ctx.attempt.number}

    async def waiter(p: Any, ctx: Any) -> Any:
        await nbtasks.wait.for_(hours=2)
        return {"attempt": ctx.attempt.number}

    async def tokened(p: Any, ctx: Any) -> Any:
        token = nbtasks.wait.create_token(timeout=p["timeout"])
        got = await nbtasks.wait.for_token(token)
        return {"token": token.id, "ok": got.ok, "output": got.output}

    async def parent(p: Any, ctx: Any) -> Any:
        child = await nbtasks.Task(registry.require("later"), registry).trigger_and_wait(
            {}, delay=3600)
        return {"child": child.id, "out": child.output}

    task(id="later", run=body)
    task(id="ttl", run=body)
    task(id="stuck", run=body, retry={"max_attempts": 2, "min_timeout_in_ms": 1000,
                                      "randomize": False})
    task(id="last", run=body, retry=None)
    task(id="waiter", run=waiter)
    task(id="tokened", run=tokened)
    task(id="parent", run=parent)


def state_mode(db: str) -> None:
    """One run in each state a restart must handle, then wait to be killed."""
    from nbtasks.testing import ManualClock

    registry = Registry()
    state_tasks(registry, blocking=True)
    TaskFactory(registry)(id="undeployed", run=lambda p, ctx: asyncio.Event().wait())
    eng = Engine(store=db, registry=registry, clock=ManualClock(T0))
    task = {tid: nbtasks.Task(registry.require(tid), registry) for tid in registry.ids()}
    eng.queues.pause("task/ttl")
    ids = {
        "later": task["later"].trigger({}, delay=3600).id,
        "ttl": task["ttl"].trigger({}, ttl=600).id,
        "stuck": task["stuck"].trigger({}).id,
        "last": task["last"].trigger({}).id,
        "undeployed": task["undeployed"].trigger({}).id,
        "waiter": task["waiter"].trigger({}).id,
        "token_soon": task["tokened"].trigger({"timeout": 3600}).id,
        "token_never": task["tokened"].trigger({"timeout": 86400}).id,
        "parent": task["parent"].trigger({}).id,
    }
    want = {"stuck": "EXECUTING", "last": "EXECUTING", "undeployed": "EXECUTING",
            "waiter": "WAITING", "token_soon": "WAITING", "token_never": "WAITING",
            "parent": "WAITING"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # a test helper may poll: it is not the engine
        eng.runs._fresh()
        if all(eng.runs.retrieve(ids[k]).status == v for k, v in want.items()):
            break
        time.sleep(0.01)
    say(ids)
    time.sleep(3600)


if __name__ == "__main__":
    mode, db, *rest = sys.argv[1:]
    if mode == "kill":
        kill_mode(db, int(rest[0]), int(rest[1]))
    elif mode == "stream":
        stream_mode(db, int(rest[0]), int(rest[1]))
    elif mode == "drain":
        drain_mode(db)
    elif mode == "crash":
        crash_mode(db, rest[0])
    elif mode == "state":
        state_mode(db)
    elif mode == "mine":
        mine_mode(db, rest[0], int(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
