"""`nbtasks.metadata` and `nbtasks.tags` inside a run."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

import nbtasks
from nbtasks import ConfigurationError, Engine, EngineError, RunStatus
from nbtasks._models import MAX_METADATA_BYTES

md = nbtasks.metadata
WaitStatus = Callable[..., RunStatus]


def run_in_task(eng: Engine, task_id: str, fn: Any, **options: Any) -> tuple[Any, Any]:
    """Trigger `fn(ctx)` as an async body; (result, final Run snapshot)."""

    async def body(payload: Any, ctx: Any) -> Any:
        return fn(ctx)

    t = eng.task(id=task_id, run=body, retry=None)
    handle = t.trigger(None, **options)
    result = handle.wait(timeout=10)
    return result, eng.runs.retrieve(handle.id)


def test_set_get_current_delete_and_chaining(engine: Engine) -> None:
    def fn(ctx: Any) -> list[Any]:
        seen = [md.current()]
        md.set("progress", 0.1).set("stage", "load").set("nested", {"a": [1]})
        seen += [md.get("progress"), md.get("missing"), md.current()]
        md.delete("stage").delete("never-set")
        current = md.current()
        assert current is not None
        current["nested"]["a"].append(2)  # a copy: changing it changes nothing
        seen.append(md.current())
        return seen

    result, run = run_in_task(engine, "md-basic", fn)
    assert result.output == [
        {}, 0.1, None, {"progress": 0.1, "stage": "load", "nested": {"a": [1]}},
        {"progress": 0.1, "nested": {"a": [1]}},
    ]
    assert run.metadata == {"progress": 0.1, "nested": {"a": [1]}}


def test_append_and_remove(engine: Engine) -> None:
    def fn(ctx: Any) -> dict[str, Any] | None:
        md.append("new", "a")                     # missing -> [v]
        md.set("scalar", "x").append("scalar", "y")  # non-list x -> [x, v]
        md.set("items", [1, 2, 1, {"k": 1}])
        md.remove("items", 1).remove("items", {"k": 1})  # deep-equal filter, all matches
        md.set("text", "abc").remove("text", "abc")      # not a list: a no-op
        md.append("new", "b")
        return md.current()

    result, _ = run_in_task(engine, "md-lists", fn)
    assert result.output == {"new": ["a", "b"], "scalar": ["x", "y"], "items": [2],
                             "text": "abc"}


def test_increment_decrement(engine: Engine) -> None:
    def fn(ctx: Any) -> dict[str, Any] | None:
        md.increment("count")                 # missing counts as 0
        md.increment("count", 4)
        md.decrement("count", 2)
        md.set("label", "n/a").increment("label", 3)  # a non-number counts as 0
        md.set("flag", True).increment("flag")        # a bool is not a number here
        md.decrement("down")
        md.increment("ratio", 0.5)
        return md.current()

    result, _ = run_in_task(engine, "md-numbers", fn)
    assert result.output == {"count": 3, "label": 3, "flag": 1, "down": -1, "ratio": 0.5}


def test_replace_and_trigger_seed(engine: Engine) -> None:
    def fn(ctx: Any) -> list[Any]:
        seen = [md.current()]
        md.replace({"fresh": 1})
        seen.append(md.current())
        return seen

    result, run = run_in_task(engine, "md-replace", fn, metadata={"seed": True, "n": 2})
    assert result.output == [{"seed": True, "n": 2}, {"fresh": 1}]
    assert run.metadata == {"fresh": 1}


def test_replace_rejects_a_non_dict(engine: Engine) -> None:
    result, _ = run_in_task(engine, "md-replace-bad", lambda ctx: md.replace(["no"]))  # type: ignore[arg-type]
    assert result.error is not None and result.error.type_name == "ConfigurationError"


def test_size_limit_is_256_kib(engine: Engine) -> None:
    def fn(ctx: Any) -> list[str]:
        out = []
        md.set("blob", "x" * (MAX_METADATA_BYTES - 100))  # fits
        try:
            md.set("blob", "x" * MAX_METADATA_BYTES)
        except ConfigurationError as exc:
            out.append(str(exc))
        out.append(str(len(md.get("blob"))))
        return out

    result, run = run_in_task(engine, "md-size", fn)
    assert MAX_METADATA_BYTES == 262_144
    message, kept = result.output
    assert "262144-byte limit" in message
    assert int(kept) == MAX_METADATA_BYTES - 100
    assert len(json.dumps(run.metadata)) < MAX_METADATA_BYTES


def test_trigger_metadata_over_the_limit_is_rejected_in_the_caller(engine: Engine) -> None:
    t = engine.task(id="md-big-seed", run=lambda p, c: None)
    with pytest.raises(ConfigurationError, match="byte limit"):
        t.trigger(None, metadata={"blob": "x" * MAX_METADATA_BYTES})
    assert engine.runs.count(task_id="md-big-seed") == 0


def test_non_json_metadata_fails_the_attempt(engine: Engine) -> None:
    result, _ = run_in_task(engine, "md-non-json", lambda ctx: md.set("bad", object()))
    assert result.error is not None and "JSON" in str(result.error)


def test_metadata_is_live_while_the_run_executes(engine: Engine,
                                                  wait_status: WaitStatus) -> None:
    gate = threading.Event()

    def body(payload: Any, ctx: Any) -> None:
        md.set("progress", 0.5)
        gate.wait(10)

    t = engine.task(id="md-live", run=body)
    handle = t.trigger(None)
    wait_status(engine, handle.id, RunStatus.EXECUTING)
    seen = threading.Event()
    unsubscribe = engine.subscribe(
        lambda e: seen.set() if e.kind == "metadata" and e.run_id == handle.id else None)
    try:
        if engine.runs.retrieve(handle.id).metadata != {"progress": 0.5}:
            assert seen.wait(10)
        assert engine.runs.retrieve(handle.id).metadata == {"progress": 0.5}
        assert handle.status is RunStatus.EXECUTING
    finally:
        unsubscribe()
        gate.set()
    assert handle.wait(timeout=10).ok


def test_metadata_is_not_propagated_to_children(engine: Engine) -> None:
    @engine.task(id="md-child")
    async def child(payload: Any, ctx: Any) -> Any:
        return md.current()

    @engine.task(id="md-parent")
    async def parent(payload: Any, ctx: Any) -> Any:
        md.set("parent-only", 1)
        return (await child.trigger_and_wait(None)).unwrap()

    assert parent.trigger(None).wait(timeout=10).output == {}


def test_metadata_outside_a_run_is_a_no_op() -> None:
    assert md.set("a", 1) is md
    assert md.current() is None and md.get("a") is None
    md.append("a", 1).increment("n").delete("a").replace({})


def test_tags_add_inside_a_run(engine: Engine) -> None:
    def fn(ctx: Any) -> list[str]:
        nbtasks.tags.add("later")
        nbtasks.tags.add(["more", "  ", "later", "first"])  # blanks and duplicates skipped
        return list(ctx.run.tags)  # ctx keeps the trigger-time tags

    result, run = run_in_task(engine, "tags-add", fn, tags=["first"])
    assert result.output == ["first"]
    assert run.tags == ["first", "later", "more"]
    assert [r.id for r in engine.runs.list(tag="more")] == [run.id]


def test_tags_add_over_ten_logs_an_error_and_does_not_throw(engine: Engine) -> None:
    def fn(ctx: Any) -> str:
        nbtasks.tags.add([f"extra-{i}" for i in range(3)])
        return "still running"

    result, run = run_in_task(engine, "tags-eleven", fn, tags=[f"t{i}" for i in range(9)])
    assert result.output == "still running"
    assert run.tags == [f"t{i}" for i in range(9)]
    rows = engine.store.select("SELECT level, message FROM logs WHERE run_id=?", (run.id,))[1]
    assert ("error", "tags.add: runs can only have 10 tags, you're trying to set 12") in rows


def test_tags_add_too_long_raises_inside_the_run(engine: Engine) -> None:
    result, _ = run_in_task(engine, "tags-long", lambda ctx: nbtasks.tags.add("x" * 129))
    assert result.error is not None and "128" in str(result.error)
    ok, _ = run_in_task(engine, "tags-128", lambda ctx: nbtasks.tags.add("x" * 128))
    assert ok.ok


def test_tags_add_outside_a_run_raises() -> None:
    with pytest.raises(EngineError, match="outside of a run"):
        nbtasks.tags.add("nope")
