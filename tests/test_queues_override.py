"""`queues.set_limit` / `reset_limit`: a runtime override of a queue's limit, from code or the
Queues tab. Real engine, real SQLite file, runs held open by gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _helpers import Gate, rows

from nbtasks import ConfigurationError, Engine, RunStatus

pytestmark = pytest.mark.timeout(60)


def _held(engine: Engine, task_id: str = "held", limit: int = 1) -> tuple[Any, Gate]:
    gate = Gate(engine)

    @engine.task(id=task_id, queue={"concurrency_limit": limit}, retry={"max_attempts": 1})
    async def held(payload: int, ctx: Any) -> int:
        await gate.wait()
        return payload

    return held, gate


def _until(engine: Engine, predicate: Any) -> None:
    """Poll the engine's own state: the wait ends on the loop's next turn, not a sleep."""
    for _ in range(2000):
        if predicate():
            return
        engine.on_loop(lambda: None)  # one loop round trip
    raise AssertionError("condition never held")


def test_a_raised_limit_starts_waiting_runs_at_once(engine: Engine) -> None:
    held, gate = _held(engine)
    handles = [held.trigger(i) for i in range(4)]
    _until(engine, lambda: engine.queues.retrieve("task/held")["running"] == 1)
    assert engine.queues.retrieve("task/held")["queued"] == 3
    snap = engine.queues.set_limit("task/held", 3)
    # no other event: the override itself hands out the free slots
    assert snap["running"] == 3 and snap["queued"] == 1
    assert snap["concurrency_limit"] == 3 and snap["defined_limit"] == 1 and snap["overridden"]
    assert sum(h.status is RunStatus.EXECUTING for h in handles) == 3
    gate.open()
    assert [h.wait(10).output for h in handles] == [0, 1, 2, 3]
    assert engine.queues.retrieve("task/held")["peak"] == 3


def test_a_lowered_limit_lets_running_runs_finish_and_holds_the_rest(engine: Engine) -> None:
    held, gate = _held(engine, limit=3)
    handles = [held.trigger(i) for i in range(5)]
    _until(engine, lambda: engine.queues.retrieve("task/held")["running"] == 3)
    snap = engine.queues.set_limit("task/held", 0)  # hold everything not yet started
    assert snap["running"] == 3 and snap["queued"] == 2
    gate.open()
    for h in handles[:3]:
        assert h.wait(10).ok
    snap = engine.queues.retrieve("task/held")
    assert snap["running"] == 0 and snap["queued"] == 2
    snap = engine.queues.reset_limit("task/held")  # back to the defined 3: both start
    assert snap["concurrency_limit"] == 3 and not snap["overridden"]
    assert all(h.wait(10).ok for h in handles[3:])


def test_an_override_outlives_a_redefinition_until_reset(engine: Engine) -> None:
    _held(engine, limit=1)
    engine.queues.set_limit("task/held", 7)
    _held(engine, limit=2)  # the cell runs again with a new limit
    snap = engine.queues.retrieve("task/held")
    assert (snap["concurrency_limit"], snap["defined_limit"], snap["overridden"]) == (7, 2, True)
    snap = engine.queues.reset_limit("task/held")
    assert (snap["concurrency_limit"], snap["overridden"]) == (2, False)
    engine.queues.set_limit("task/held", None)  # None: no limit at all
    assert engine.queues.retrieve("task/held")["concurrency_limit"] is None


@pytest.mark.parametrize("bad", [-1, 1001, 2.5, "3", True])
def test_a_bad_limit_names_the_queue_and_the_value_and_changes_nothing(
        engine: Engine, db_path: Path, bad: Any) -> None:
    _held(engine, limit=1)
    with pytest.raises(ConfigurationError) as err:
        engine.queues.set_limit("task/held", bad)
    assert "'task/held'" in str(err.value) and repr(bad) in str(err.value)
    assert "0 to 1000" in str(err.value)
    snap = engine.queues.retrieve("task/held")
    assert (snap["concurrency_limit"], snap["overridden"]) == (1, False)
    assert rows(engine, db_path)["runs"] == 0


def test_an_unknown_queue_is_refused_by_name(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="set_limit: no queue named 'nope'"):
        engine.queues.set_limit("nope", 2)
    with pytest.raises(ConfigurationError, match="reset_limit: no queue named 'nope'"):
        engine.queues.reset_limit("nope")
    assert all(q["name"] != "nope" for q in engine.queues.list())


def test_the_queues_tab_overrides_a_limit_says_so_and_resets(engine: Engine) -> None:
    from nbtasks.notebook._ui import Guard, is_hidden
    from nbtasks.notebook.queues_panel import QueuesPanel

    reported: list[str] = []
    panel = QueuesPanel(engine, Guard(reported.append))
    try:
        held, gate = _held(engine)
        handles = [held.trigger(i) for i in range(3)]
        _until(engine, lambda: engine.queues.retrieve("task/held")["running"] == 1)
        panel.refresh()
        (row,) = panel.list.children
        assert is_hidden(row.reset) and "at most 1 at once" in row.text.value
        row.limit.value = "lots"
        row.set.click()
        assert "queues.set_limit(&#x27;task/held&#x27;, &#x27;lots&#x27;)" in row.note.value
        assert not engine.queues.retrieve("task/held")["overridden"]
        row.limit.value = "3"
        row.set.click()
        assert engine.queues.retrieve("task/held")["running"] == 3  # started at once
        assert "at most 3 at once" in row.text.value and "the code says at most 1" in row.text.value
        assert "until Reset or a kernel restart" in row.note.value and not is_hidden(row.reset)
        row.reset.click()
        assert engine.queues.retrieve("task/held")["concurrency_limit"] == 1
        assert is_hidden(row.reset) and "nbt-overridden" not in row.text.value
        gate.open()
        assert all(h.wait(10).ok for h in handles)
        assert reported == []
    finally:
        panel.close()


def test_a_read_only_queues_tab_has_no_limit_field(engine: Engine) -> None:
    from nbtasks.notebook._ui import Guard
    from nbtasks.notebook.queues_panel import QueuesPanel

    _held(engine)
    panel = QueuesPanel(engine, Guard(lambda _m: None), read_only=True)
    try:
        panel.refresh()
        (row,) = panel.list.children
        assert row.children == (row.text,)
        row.limit.value = "9"
        row._set_limit(lambda: None)  # even reached directly, it does nothing
        assert engine.queues.retrieve("task/held")["concurrency_limit"] == 1
    finally:
        panel.close()
