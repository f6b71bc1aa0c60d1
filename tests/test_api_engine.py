"""The Engine object, the module-level default engine, shutdown, and the public namespace."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import ConfigurationError, Engine, EngineError, RunStatus

WaitStatus = Callable[..., RunStatus]


def test_engine_as_a_context_manager(db_path: Path) -> None:
    with Engine(store=str(db_path), concurrency_limit=5) as eng:
        assert not eng.closed

        @eng.task(id="double")
        def double(payload: int, ctx: Any) -> int:
            return payload * 2

        handle = double.trigger(21)
        assert handle.wait(timeout=10).output == 42
        assert eng.runs.retrieve(handle.id).output == 42
        eng.configure(retry=None, machine="kernel", concurrency_limit=7)
        assert eng.config.retry is None and eng.config.concurrency_limit == 7
    assert eng.closed
    with pytest.raises(EngineError, match="closed"):
        double.trigger(1)
    eng.close()  # twice is fine
    with Engine(store=str(db_path)) as again:  # the history is still there
        assert again.runs.retrieve(handle.id).output == 42


def test_engines_are_independent(tmp_path: Path) -> None:
    with Engine(store=str(tmp_path / "a.db")) as a, Engine(store=str(tmp_path / "b.db")) as b:
        a.task(id="same-id", run=lambda p, c: "a")
        b.task(id="same-id", run=lambda p, c: "b")
        assert nbtasks.Task(a.registry.require("same-id"), a.registry).trigger(None).wait(10).output == "a"
        assert b.runs.count() == 0


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"on_sucess": print}, "unknown option"),
        ({"store": "x.db"}, "fixed when an Engine is created"),
        ({"retry": {"max_attempts": 0}}, "max_attempts"),
        ({"machine": "huge"}, "not a machine preset"),
        ({"concurrency_limit": 0}, "concurrency_limit"),
        ({"on_start": "nope"}, "callable"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_engine_configure_rejects_bad_options(engine: Engine, options: dict[str, Any],
                                              fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        engine.configure(**options)


def test_engine_constructor_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="concurrency_limit"):
        Engine(store=str(tmp_path / "x.db"), concurrency_limit=0)
    with pytest.raises(ConfigurationError, match="machine"):
        Engine(store=str(tmp_path / "x.db"), machine="huge")


def test_default_engine_is_lazy_and_lives_next_to_the_notebook(tmp_path: Path) -> None:
    from nbtasks._configure import default_engine

    nbtasks.configure(retry={"max_attempts": 1})  # before first use: nothing started yet
    assert not (tmp_path / ".nbtasks").exists()

    @nbtasks.task(id="api-engine-default")
    def fails(payload: Any, ctx: Any) -> None:
        raise RuntimeError("once")

    handle = fails.trigger(None)
    assert handle.wait(timeout=10).status is RunStatus.FAILED
    eng = default_engine()
    assert eng.runs.retrieve(handle.id).attempt_count == 1  # configure()'s retry applied
    assert Path(eng.store.path).resolve() == (tmp_path / ".nbtasks" / "runs.db").resolve()


def test_configure_store_switches_the_default_engine(tmp_path: Path) -> None:
    @nbtasks.task(id="api-engine-switch")
    async def switch(payload: int, ctx: Any) -> int:
        return payload

    first = switch.trigger(1)
    first.wait(timeout=10)
    nbtasks.configure(store=str(tmp_path / "other.db"))
    second = switch.trigger(2)  # the module-level task follows the new default engine
    assert second.wait(timeout=10).output == 2
    assert [r.id for r in nbtasks.runs.list()] == [second.id]
    assert (tmp_path / "other.db").exists()


def test_close_returns_promptly_with_a_stuck_sync_body(db_path: Path,
                                                      wait_status: WaitStatus) -> None:
    stop = threading.Event()
    eng = Engine(store=str(db_path))
    try:
        @eng.task(id="stuck")
        def stuck(payload: Any, ctx: Any) -> None:
            while not stop.is_set():  # ignores ctx.signal on purpose
                time.sleep(0.001)

        handle = stuck.trigger(None)
        wait_status(eng, handle.id, RunStatus.EXECUTING)
        closer = threading.Thread(target=eng.close, daemon=True)
        closer.start()
        closer.join(timeout=8)
        assert not closer.is_alive(), "close() hung on a stuck sync body"
        assert eng.closed
    finally:
        stop.set()
        eng.close()


SCRIPT = """
import asyncio, sys, time
import nbtasks

eng = nbtasks.Engine(store=sys.argv[1])

@eng.task(id="spin")
def spin(payload, ctx):
    while True:  # never checks ctx.signal
        time.sleep(0.01)

@eng.task(id="sleeper")
async def sleeper(payload, ctx):
    await asyncio.sleep(3600)

@nbtasks.task(id="module-sleeper")
async def module_sleeper(payload, ctx):
    await asyncio.sleep(3600)

@eng.task(id="token-waiter")
async def token_waiter(payload, ctx):
    await nbtasks.wait.for_token(payload)

@eng.task(id="sync-parent")
def sync_parent(payload, ctx):
    sleeper.trigger(None).wait()

handles = [spin.trigger(None), sleeper.trigger(None), module_sleeper.trigger(None),
           token_waiter.trigger(eng.wait.create_token().id), sync_parent.trigger(None),
           sleeper.trigger(None, delay="1h")]
while [h.status.value for h in handles] != ["EXECUTING"] * 3 + ["WAITING"] * 2 + ["DELAYED"]:
    time.sleep(0.01)
print("script done", flush=True)
"""


@pytest.mark.timeout(90)
def test_a_script_with_running_runs_exits_on_its_own(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "runs.db")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "script done" in proc.stdout
    assert time.monotonic() - start < 60


def test_import_loads_neither_pandas_nor_ipywidgets() -> None:
    code = textwrap.dedent("""
        import sys
        import nbtasks
        nbtasks.Engine(store=":memory:").close()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       {"pandas", "ipywidgets", "IPython", "matplotlib", "dask", "distributed"})
        print(heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_all_matches_the_public_namespace() -> None:
    assert isinstance(nbtasks.__all__, tuple)
    assert len(set(nbtasks.__all__)) == len(nbtasks.__all__)
    for name in nbtasks.__all__:
        assert getattr(nbtasks, name) is not None, name
    public = {n for n, v in vars(nbtasks).items()
              if not n.startswith("_") and not isinstance(v, type(sys))}
    public -= {"annotations", "TYPE_CHECKING", "Any"}  # typing helpers of the module itself
    assert public - set(nbtasks.__all__) == set()
    # Sorted-ish: the constant first, then classes, then functions and objects, each sorted.
    upper = [n for n in nbtasks.__all__ if n[0].isupper()]
    lower = [n for n in nbtasks.__all__ if n[0].islower()]
    assert nbtasks.__all__ == (*upper, *lower)
    assert lower == sorted(lower) and upper[1:] == sorted(upper[1:])


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from nbtasks import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(nbtasks.__all__)


def test_testing_module_exports_the_manual_clock() -> None:
    from nbtasks import testing

    assert testing.ManualClock is nbtasks.ManualClock
    assert testing.__all__ == ("ManualClock", "RealClock")


def test_module_level_apis_inside_a_run_use_the_runs_engine(engine: Engine) -> None:
    @engine.task(id="target")
    async def target(payload: int, ctx: Any) -> int:
        return payload * 10

    @engine.task(id="uses-module-apis")
    async def uses_module_apis(payload: Any, ctx: Any) -> dict[str, Any]:
        child = (await nbtasks.tasks.trigger_and_wait("target", 4)).unwrap()
        me = nbtasks.runs.retrieve(ctx.run.id)
        names = [q["name"] for q in nbtasks.queues.list()]
        return {"child": child, "me": me.task_id, "has-queue": "task/target" in names}

    out = uses_module_apis.trigger(None).wait(timeout=10).output
    assert out == {"child": 40, "me": "uses-module-apis", "has-queue": True}
    assert engine.runs.count(task_id="target") == 1


def test_close_releases_callers_blocked_in_wait(db_path: Path, wait_status: WaitStatus) -> None:
    eng = Engine(store=str(db_path))
    outcome: list[str] = []

    @eng.task(id="endless")
    async def endless(payload: Any, ctx: Any) -> None:
        await asyncio.sleep(3600)

    handle = endless.trigger(None)
    wait_status(eng, handle.id, RunStatus.EXECUTING)

    def blocked_cell() -> None:
        try:
            handle.wait()  # no timeout: only the engine going away can end this
        except Exception as exc:
            outcome.append(type(exc).__name__)

    # Close only once the engine holds the caller's wait: a thread scheduled late on a busy
    # machine would otherwise call wait() on a closed engine, another case (EngineError).
    held = threading.Event()
    on_final = eng.scheduler.on_final

    def noting(run_id: str, callback: Any) -> bool:
        taken = on_final(run_id, callback)
        held.set()
        return taken

    eng.scheduler.on_final = noting  # type: ignore[method-assign]
    waiter = threading.Thread(target=blocked_cell, daemon=True)
    waiter.start()
    assert held.wait(10)
    eng.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "a caller blocked in handle.wait() hung after close()"
    assert outcome == ["CancelledError"]
