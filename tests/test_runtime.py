"""The bridge between callers' threads and loops and the engine loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nbtasks import Engine


def test_a_call_that_raises_at_once_fails_only_its_caller(engine: Engine) -> None:
    rt = engine.runtime
    loop = rt.loop

    def bad() -> asyncio.Future[int]:
        raise ValueError("raised before any future existed")

    def good(n: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = loop.create_future()
        fut.set_result(n)
        return fut

    async def main() -> list[Any]:
        # Posted together, so one mailbox drain starts all three on the engine loop.
        return await asyncio.gather(rt.run(good, 1), rt.run(bad), rt.run(good, 2),
                                    return_exceptions=True)

    first, error, second = asyncio.run(main())
    assert (first, second) == (1, 2)
    assert isinstance(error, ValueError)
    with pytest.raises(ValueError, match="raised before"):
        rt.call(bad)
    assert rt.call(good, 3) == 3
