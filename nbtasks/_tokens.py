"""Wait tokens (v4 waitpoints): created anywhere, completed anywhere, awaited inside a run.

Tokens are rows in the store's `waitpoints` table, so a pending token survives a kernel restart
and can be completed from a cell, another run or a dashboard button. All methods here run on
the engine loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._clock import TimerHandle, to_datetime
from ._errors import ConfigurationError, SubtaskUnwrapError, TaskRunError, WaitTimeoutError
from ._payload import dumps, loads
from ._runstate import new_id

if TYPE_CHECKING:
    from ._engine import Engine

OutT = TypeVar("OutT")


@dataclass(frozen=True, slots=True)
class WaitToken:
    """What `wait.create_token()` returns; pass it (or its id) to complete_token/for_token."""

    id: str
    timeout_at: float | None = None
    is_cached: bool = False

    def __str__(self) -> str:
        return self.id


class WaitResult(Generic[OutT]):
    """`wait.for_token()`'s answer: `ok` with `output`, or a WaitTimeoutError in `error`."""

    __slots__ = ("error", "ok", "output", "token_id")

    def __init__(self, token_id: str, ok: bool, output: Any, error: TaskRunError | None) -> None:
        self.token_id = token_id
        self.ok = ok
        self.output = output
        self.error = error

    def unwrap(self) -> OutT:
        if self.error is not None:
            raise SubtaskUnwrapError("wait.for_token", self.token_id, self.error)
        return self.output  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"WaitResult(ok={self.ok}, output={self.output!r}, error={self.error!s})"


@dataclass(slots=True)
class _Token:
    id: str
    created_at: float
    timeout_at: float | None
    tags: list[str]
    status: str = "WAITING"
    output_json: str | None = None
    completed_at: float | None = None
    run_id: str | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    timer: TimerHandle | None = None


def _tags(text: str | None) -> list[str]:
    """Stored token tags; an odd value (bad JSON, not a list) reads as none, never raising: one
    odd row must not stop an engine from starting or waiting on its other tokens."""
    try:
        tags = loads(text)
    except ValueError:
        return []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


class TokenBook:
    """The engine's tokens: in memory while pending, always mirrored to the store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tokens: dict[str, _Token] = {}

    def _persist(self, tok: _Token) -> None:
        self.engine.writer.waitpoint(tok.id, (
            tok.id, tok.run_id, "token", tok.status, tok.created_at, None, tok.timeout_at,
            tok.completed_at, tok.output_json, dumps(tok.tags) if tok.tags else None,
            self.engine.owner, None,
        ))

    def _arm(self, tok: _Token) -> None:
        if tok.timeout_at is not None:
            tok.timer = self.engine.clock.call_at(tok.timeout_at, partial(self._time_out, tok))

    def create(self, timeout: float | None, tags: list[str], key: str | None,
               token_id: str | None = None) -> WaitToken:
        """A new token, or the one `key` names (in memory or, settled or not, in the store)."""
        if key is not None:
            found = self._load(key)
            if found is not None:
                return WaitToken(found.id, found.timeout_at, is_cached=True)
        now = self.engine.clock.now()
        tok = _Token(key or token_id or new_id("waitpoint_"), now,
                     now + timeout if timeout else None, tags)
        self.tokens[tok.id] = tok
        self._persist(tok)
        self._arm(tok)
        return WaitToken(tok.id, tok.timeout_at)

    def _load(self, token_id: str) -> _Token | None:
        tok = self.tokens.get(token_id)
        if tok is not None:
            return tok
        cols, rows = self.engine.store.select(
            "SELECT id, created_at, timeout_at, tags, status, output, completed_at, run_id "
            "FROM waitpoints WHERE id = ? AND kind = 'token'", (token_id,))
        if not rows:
            return None
        r = dict(zip(cols, rows[0], strict=True))
        tok = _Token(r["id"], r["created_at"], r["timeout_at"], _tags(r["tags"]),
                     r["status"], r["output"], r["completed_at"], r["run_id"])
        self.tokens[tok.id] = tok
        if tok.status == "WAITING":
            self._arm(tok)
        return tok

    def restore(self) -> None:
        """After a restart: re-arm the timeouts of pending tokens (delays count from creation)."""
        _, rows = self.engine.store.select(
            "SELECT id FROM waitpoints WHERE kind = 'token' AND status = 'WAITING' AND owner = ?",
            (self.engine.owner,))
        for (token_id,) in rows:
            self._load(token_id)

    def _settle(self, tok: _Token, status: str, output_json: str | None) -> None:
        tok.status = status
        tok.output_json = output_json
        tok.completed_at = self.engine.clock.now()
        if tok.timer is not None:
            tok.timer.cancel()
            tok.timer = None
        self._persist(tok)
        waiters, tok.waiters = tok.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def complete(self, token_id: str, data_json: str) -> bool:
        """Settle a pending token with data already encoded (in the caller, by wait.complete_token)."""
        tok = self._load(token_id)
        if tok is None:
            raise ConfigurationError(f"no wait token with id {token_id!r}")
        if tok.status != "WAITING":
            return False
        self._settle(tok, "COMPLETED", data_json)
        return True

    def _time_out(self, tok: _Token) -> None:
        if tok.status == "WAITING":
            self._settle(tok, "TIMED_OUT", None)

    def result(self, tok: _Token) -> WaitResult[Any]:
        if tok.status == "COMPLETED":
            return WaitResult(tok.id, True, loads(tok.output_json), None)
        at = to_datetime(tok.timeout_at)
        return WaitResult(tok.id, False, None,
                          WaitTimeoutError(f"wait token {tok.id} timed out at {at}"))

    def pending(self, token_id: str, run_id: str | None) -> tuple[_Token, asyncio.Future[None] | None]:
        tok = self._load(token_id)
        if tok is None:
            raise ConfigurationError(f"no wait token with id {token_id!r}")
        if tok.status != "WAITING":
            return tok, None
        if run_id is not None and tok.run_id != run_id:
            tok.run_id = run_id
            self._persist(tok)
        fut: asyncio.Future[None] = self.engine.runtime.loop.create_future()
        tok.waiters.append(fut)
        return tok, fut

    def listing(self, status: str | None) -> list[dict[str, Any]]:
        """Token rows as dicts. A row that can't be decoded (a time out of range or bad JSON,
        written by an older version or by hand) is listed with that field None and a `note`
        saying why, instead of failing the whole listing."""
        sql = ("SELECT id, status, created_at, timeout_at, completed_at, run_id, tags "
               "FROM waitpoints WHERE kind = 'token'")
        params: tuple[Any, ...] = ()
        if status is not None:
            sql += " AND status = ?"
            params = (status,)
        cols, rows = self.engine.store.select(sql + " ORDER BY created_at", params)
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            problems: list[str] = []
            try:
                d["tags"] = loads(d["tags"]) or []
            except (TypeError, ValueError) as exc:
                problems.append(f"tags: {exc}")
                d["tags"] = []
            for k in ("created_at", "timeout_at", "completed_at"):
                try:
                    d[k] = to_datetime(d[k])
                except (TypeError, ValueError, OverflowError, OSError) as exc:
                    problems.append(f"{k}={d[k]!r}: {exc}")
                    d[k] = None
            if problems:
                d["note"] = "undecodable row: " + "; ".join(problems)
            out.append(d)
        return out
