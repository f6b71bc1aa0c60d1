"""Replay remembers its origin: `replayed_from` on the new run, `ctx.run.is_replay` inside it,
kept in the file across a reopen and carried into worker processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine

pytestmark = pytest.mark.timeout(60)


def test_a_replay_records_its_origin_and_knows_it_is_one(db_path: Path) -> None:
    with Engine(store=str(db_path)) as eng:
        @eng.task(id="origin")
        def origin(payload: int, ctx: Any) -> list[Any]:
            return [payload, ctx.run.is_replay, ctx.run.replayed_from]

        first = origin.trigger(1)
        assert first.wait(timeout=10).output == [1, False, None]
        again = eng.runs.replay(first.id)
        assert again.wait(timeout=10).output == [1, True, first.id]
        edited = again.replay(7)  # a replay of a replay points at its own origin
        assert edited.wait(timeout=10).output == [7, True, again.id]
        assert eng.runs.retrieve(first.id).replayed_from is None
        ids = (first.id, again.id, edited.id)
    with Engine(store=str(db_path)) as reopened:
        assert [reopened.runs.retrieve(i).replayed_from for i in ids] == [None, ids[0], ids[1]]


@pytest.mark.timeout(240)  # the first worker of a session starts its fork server: slow under load
def test_is_replay_reaches_a_worker_process(process_engine: Callable[..., Engine]) -> None:
    eng = process_engine()

    @eng.task(id="origin-remote", machine="micro")
    def remote(payload: Any, ctx: Any) -> list[Any]:
        return [ctx.run.is_replay, ctx.run.replayed_from]

    first = remote.trigger(None)
    assert first.wait(timeout=180).output == [False, None]  # a ceiling: it includes the start
    assert eng.runs.replay(first.id).wait(timeout=30).output == [True, first.id]
