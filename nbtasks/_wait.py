"""`nbtasks.wait`: durations, dates and tokens. Inside a run a wait gives the queue slot back.

>>> await nbtasks.wait.for_(minutes=5)                            # doctest: +SKIP
>>> token = nbtasks.wait.create_token(timeout="1h", tags=["approval"])
>>> result = await nbtasks.wait.for_token(token)                  # inside a run
>>> nbtasks.wait.complete_token(token, {"approved": True})        # from a cell or a button

Sync task bodies use the blocking forms `for_sync`, `until_sync` and `for_token_sync`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._clock import sleep_until
from ._context import CURRENT, AttemptScope
from ._durations import HORIZON, Duration, parse_duration
from ._errors import ConfigurationError
from ._models import check_tags
from ._parking import parked
from ._payload import LIMITS, check_text, dumps
from ._recovery import token_id, wait_target
from ._tokens import WaitResult, WaitToken

if TYPE_CHECKING:
    from ._engine import Engine

#: As Trigger.dev's wait durations: months are 30 days and years 365.
_UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800,
                 "months": 30 * 86400, "years": 365 * 86400}


class WaitAPI:
    """Bound to one engine (`eng.wait`) or the default one (`nbtasks.wait`)."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        # Inside a run, wait on the run's own engine: only it can park the run, and its clock
        # is the one that counts (an explicit Engine's run calling `nbtasks.wait`).
        scope = CURRENT.get()
        if scope is not None and scope.engine is not None:
            return scope.engine  # type: ignore[no-any-return]
        return self._engine()

    async def _park(self, scope: AttemptScope | None, aw: Any) -> Any:
        """On the engine loop: await `aw`, parking the current run (slot released) if any."""
        eng = self.engine
        run = eng._parked(scope)
        return await (eng.scheduler.park(run, aw) if run is not None else aw)

    async def until(self, date: datetime, *, throw_if_in_the_past: bool = False) -> None:
        """Wait until `date` (aware). A past date returns at once, or raises if asked to.

        Inside a run the target is recorded: an attempt resumed after a kernel restart waits
        for the same moment, and not at all once it has passed (nbtasks._recovery).
        """
        if not isinstance(date, datetime) or date.tzinfo is None:
            raise ConfigurationError(f"wait.until: pass an aware datetime, got {date!r}")
        eng = self.engine
        when = date.timestamp()
        if when - eng.clock.now() > HORIZON:
            raise ConfigurationError(
                f"wait.until: {date.isoformat()} is more than {HORIZON / 86400 / 365:.0f} years ahead")
        scope = CURRENT.get()
        if scope is None and when <= eng.clock.now():
            if throw_if_in_the_past:
                raise ConfigurationError("Date is in the past")
            return

        async def _go() -> None:
            run = eng._parked(scope)
            target, replayed = (when, False) if run is None else wait_target(eng, run, when)
            if target <= eng.clock.now():
                if throw_if_in_the_past and not replayed:
                    raise ConfigurationError("Date is in the past")
                return
            await self._park(scope, sleep_until(eng.clock, target))

        await eng.runtime.run(_go)

    async def for_(self, **units: float) -> None:
        """Wait a duration: seconds=, minutes=, hours=, days=, weeks=, months=, years=."""
        seconds = _seconds(units)
        eng = self.engine
        from datetime import UTC

        await self.until(datetime.fromtimestamp(eng.clock.now() + seconds, UTC))

    def create_token(self, *, timeout: Duration | None = None, tags: Any = None,
                     idempotency_key: str | None = None) -> WaitToken:
        """A token to wait on; `timeout` ("10m", seconds, up to ~10 years) or none. Callable
        anywhere. Bad input (a NaN timeout, a key or tag SQLite can't store) raises here."""
        seconds = None if timeout is None else parse_duration(timeout, where="timeout")
        checked = check_tags(tags, where="token tags")
        if idempotency_key is not None:
            check_text(idempotency_key, where="idempotency_key", max_chars=LIMITS.key_chars)
        eng = self.engine
        scope = CURRENT.get()

        def _create() -> WaitToken:
            run = eng._parked(scope)
            if run is None or idempotency_key is not None:
                return eng.tokens.create(seconds, checked, idempotency_key)
            # Inside a run the id follows from the call's place, so a resumed attempt gets the
            # same token back (looked up only when resuming).
            derived = token_id(run)
            if run.replay is not None:
                return eng.tokens.create(seconds, checked, derived)
            return eng.tokens.create(seconds, checked, None, token_id=derived)

        return eng.on_loop(_create)  # type: ignore[no-any-return]

    def complete_token(self, token: WaitToken | str, data: Any = None) -> bool:
        """Complete a pending token with JSON `data`; False if it was already settled.

        `data` is encoded here, in the caller: data JSON can't hold (NaN, a lone surrogate, an
        object) or over the size limit raises PayloadSerializationError naming the path.
        """
        eng = self.engine
        token_id = check_text(str(token), where="token id")
        data_json = dumps({} if data is None else data, what="data")
        return bool(eng.on_loop(eng.tokens.complete, token_id, data_json))

    async def for_token(self, token: WaitToken | str) -> WaitResult[Any]:
        """Wait for a token's completion (or its timeout); inside a run the slot is released."""
        eng = self.engine
        scope = CURRENT.get()
        run_id = scope.ctx.run.id if scope is not None else None
        token_id = check_text(str(token), where="token id")

        async def _go() -> WaitResult[Any]:
            tok, fut = eng.tokens.pending(token_id, run_id)
            if fut is not None:
                await self._park(scope, fut)
            return eng.tokens.result(tok)

        return await eng.runtime.run(_go)

    def list_tokens(self, status: str | None = "WAITING") -> list[dict[str, Any]]:
        """Tokens (pending ones by default) as dicts: id, status, times, run_id, tags; a row that
        can't be decoded has the odd field None and a `note` saying why."""
        if status is not None and status not in ("WAITING", "COMPLETED", "TIMED_OUT"):
            raise ConfigurationError(
                f"wait.list_tokens: status {status!r} is not WAITING, COMPLETED, TIMED_OUT or None")
        eng = self.engine
        eng.runs._fresh()
        return eng.tokens.listing(status)

    # ---------------------------------------------------------- blocking forms for sync bodies

    def for_sync(self, **units: float) -> None:
        """Blocking `for_`, for sync task bodies (runs in their worker thread)."""
        self._block(self.for_(**units))

    def until_sync(self, date: datetime, *, throw_if_in_the_past: bool = False) -> None:
        self._block(self.until(date, throw_if_in_the_past=throw_if_in_the_past))

    def for_token_sync(self, token: WaitToken | str) -> WaitResult[Any]:
        return self._block(self.for_token(token))  # type: ignore[no-any-return]

    def _block(self, coro: Any) -> Any:
        eng = self.engine
        if eng.runtime.in_loop():
            coro.close()
            raise ConfigurationError(
                "the blocking wait forms are for sync task bodies; in an async body use "
                "`await nbtasks.wait.for_(...)`")

        context = contextvars.copy_context()  # the sync body's run context, for parking

        async def _go() -> Any:
            return await asyncio.get_running_loop().create_task(coro, context=context)

        with parked():  # the sync body's thread waits: the pool may start another meanwhile
            return eng.runtime.call(_go)


def _seconds(units: dict[str, float]) -> float:
    unknown = set(units) - set(_UNIT_SECONDS)
    if unknown or not units:
        raise ConfigurationError(
            f"wait.for_: give one or more of {', '.join(_UNIT_SECONDS)}; got {sorted(units)}")
    total = 0.0
    for name, n in units.items():
        if isinstance(n, bool) or not isinstance(n, int | float) or not 0 <= n <= HORIZON:
            raise ConfigurationError(  # `not 0 <= n` is also true for NaN
                f"wait.for_: {name}={n!r} must be a finite, non-negative number")
        total += n * _UNIT_SECONDS[name]
    if total > HORIZON:
        raise ConfigurationError(
            f"wait.for_: {units!r} is more than {HORIZON / 86400 / 365:.0f} years")
    return total
