"""The executor protocol: where one attempt's lifecycle runs.

`inline` runs it in the kernel; `process` in a warm worker of a machine preset's pool; `dask` on
a cluster. The scheduler, queues, retries and the store stay in the kernel whichever runs it.
"""

from __future__ import annotations

from typing import Protocol

from .._context import AttemptScope
from .._lifecycle import AttemptOutcome, AttemptPlan


class Executor(Protocol):
    """Runs attempts. An executor that loses its worker returns a failed outcome, never hangs."""

    name: str

    async def start(self) -> None:
        """Warm up (spawn pools, connect). Called once on the engine loop before the first use."""
        ...

    async def execute(self, plan: AttemptPlan, scope: AttemptScope) -> AttemptOutcome:
        """Run one attempt; cancellation of the awaiting task stops it (kill, or abandon)."""
        ...

    async def close(self) -> None:
        """Stop workers. Attempts still running are abandoned (their runs are already final)."""
        ...
