"""Fixtures the fault tests share: a task that echoes its payload and records each call."""

from __future__ import annotations

from typing import Any

import pytest

from nbtasks import Engine


@pytest.fixture
def calls() -> list[Any]:
    """The payloads `echo` ran with: empty when a refused trigger ran nothing."""
    return []


@pytest.fixture
def echo(engine: Engine, calls: list[Any]) -> Any:
    @engine.task(id="echo", retry=None)
    async def echo(payload: Any, ctx: Any) -> Any:
        calls.append(payload)
        return payload

    return echo
