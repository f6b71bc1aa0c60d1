"""A paused queue shows as paused where its runs appear: the batch bar names only the paused
queues its own waiting runs are in (the status line and run detail are covered in
test_dashboard_v2.py)."""

from __future__ import annotations

from typing import Any

import pytest

from nbtasks import Engine
from nbtasks.notebook.status_line import BatchProgress

pytestmark = pytest.mark.timeout(60)


def test_the_batch_bar_names_the_paused_queue_its_runs_wait_in(engine: Engine) -> None:
    @engine.task(id="held", retry={"max_attempts": 1})
    def held(payload: Any, ctx: Any) -> Any:
        return payload

    @engine.task(id="elsewhere", retry={"max_attempts": 1})
    def elsewhere(payload: Any, ctx: Any) -> Any:
        return payload

    engine.queues.pause("task/held")
    engine.queues.pause("task/elsewhere")
    waiting = [held.trigger(i) for i in range(3)]
    engine.runs.count()  # the rows are committed
    bar = BatchProgress(engine, "batch_one", [h.id for h in waiting], counts=True)
    try:
        label = bar._label.value
        assert "queue paused: task/held" in label and "task/elsewhere" not in label
        engine.queues.resume("task/held")
        for h in waiting:
            assert h.wait(10).ok
        bar.finish(True)
        assert "paused" not in bar._label.value and "3/3 done" in bar._label.value
    finally:
        bar.close()
    # a batch whose runs wait in no paused queue says nothing of the paused one
    engine.queues.resume("task/elsewhere")
    engine.queues.pause("task/held")
    other = [elsewhere.trigger(9)]
    bar = BatchProgress(engine, "batch_two", [h.id for h in other])
    try:
        assert "paused" not in bar._label.value
    finally:
        bar.close()
        engine.queues.resume("task/held")
