"""Turn a trigger call into a RunState, in the caller's thread, before anything is recorded.

Every option is validated here, so bad input raises in the cell that passed it and the store
never sees a half-made run. With no options the fast path touches no pydantic at all.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ._context import AttemptScope, current_scope
from ._durations import parse_delay, parse_duration, parse_ttl
from ._errors import ConfigurationError, PayloadSerializationError
from ._models import check_tags, parse_queue, parse_trigger_options
from ._payload import LIMITS, check_text, dumps
from ._runstate import RunState, new_id
from ._status import RunStatus
from ._tasks import TaskDefinition

if TYPE_CHECKING:
    from ._engine import Engine

#: (queue name, concurrency_limit, total): a trigger-time queue to create or update (v3).
QueueRequest = tuple[str, int | None, int | None]

DEFAULT_IDEMPOTENCY_TTL = 30 * 86400.0


def idempotency_key(key: str | list[str], scope: str = "run") -> str:
    """Trigger.dev's idempotencyKeys.create: SHA-256 hex of the parts joined with "-".

    `run` appends the current run id, `attempt` the run id and attempt number, `global`
    nothing; outside a run every scope is global.
    """
    if scope not in ("run", "attempt", "global"):
        raise ConfigurationError(f"idempotency_keys.create: scope {scope!r} is not run|attempt|global")
    parts = [key] if isinstance(key, str) else list(key) if isinstance(key, list | tuple) else []
    if not parts or not all(isinstance(p, str) for p in parts):
        raise ConfigurationError(
            f"idempotency key must be a string or a list of strings, got {key!r}"[:200])
    for p in parts:
        check_text(p, where="idempotency_key", max_chars=LIMITS.key_chars, allow_empty=True)
    s = current_scope()
    if s is not None and scope == "run":
        parts.append(s.ctx.run.id)
    elif s is not None and scope == "attempt":
        parts += [s.ctx.run.id, str(s.ctx.attempt.number)]
    return hashlib.sha256("-".join(parts).encode()).hexdigest()


def _normalise_key(key: str | list[str]) -> str:
    """Any 64-character string is taken as already hashed, as Trigger.dev does; anything else is
    hashed with global scope (v3)."""
    if isinstance(key, str) and len(key) == 64:
        return check_text(key, where="idempotency_key")
    return idempotency_key(key, scope="global")


def prepare_run(
    engine: Engine,
    defn: TaskDefinition,
    payload_json: str,
    options: dict[str, Any],
    scope: AttemptScope | None,
    *,
    batch_id: str | None = None,
    is_test: bool = False,
    replayed_from: str | None = None,
) -> tuple[RunState, QueueRequest | None]:
    now = engine.clock.now()
    run = RunState(new_id("run_"), defn.id, payload_json, now)
    run.queue = defn.queue_name
    run.machine = defn.machine or engine.config.machine
    run.batch_id = batch_id
    run.replayed_from = replayed_from
    queue_request: QueueRequest | None = None
    if options:
        o = parse_trigger_options(options, where=f"{defn.id}.trigger")
        if o.delay is not None:
            at = parse_delay(o.delay, now, where="delay")
            if at is not None:
                run.delay_until = run.queued_at = at
                run.status = RunStatus.DELAYED
        run.ttl = parse_ttl(o.ttl)
        run.tags = check_tags(o.tags)
        if o.metadata is not None:
            try:
                dumps(o.metadata, what="metadata")
            except PayloadSerializationError as exc:  # an option: a ConfigurationError
                raise ConfigurationError(str(exc)) from None
            run.metadata = dict(o.metadata)
        if o.idempotency_key is not None:
            run.idempotency_key = _normalise_key(o.idempotency_key)
            ttl = (DEFAULT_IDEMPOTENCY_TTL if o.idempotency_key_ttl is None
                   else parse_duration(o.idempotency_key_ttl, where="idempotency_key_ttl"))
            run.idempotency_expires_at = now + ttl
        elif o.idempotency_key_ttl is not None:
            raise ConfigurationError("idempotency_key_ttl needs an idempotency_key")
        if o.concurrency_key is not None:
            run.concurrency_key = check_text(o.concurrency_key, where="concurrency_key",
                                             max_chars=LIMITS.key_chars)
        if isinstance(o.queue, str):
            parsed = parse_queue({"name": check_text(o.queue, where="queue")}, where="queue")
            run.queue = (parsed.name if parsed else None) or defn.queue_name
        elif o.queue is not None:
            q = parse_queue(o.queue, where="queue")
            assert q is not None
            name = q.name or defn.queue_name
            run.queue = name
            queue_request = (name, q.concurrency_limit, q.total)
        if o.machine is not None:
            run.machine = o.machine
        run.max_attempts = o.max_attempts or None
        run.max_duration = o.max_duration
        run.priority = o.priority
    if scope is not None:
        run.parent_id = scope.ctx.run.id
        run.root_id = scope.ctx.run.root_id or scope.ctx.run.id
        is_test = is_test or scope.ctx.run.is_test
    run.is_test = is_test
    return run, queue_request


__all__ = ("QueueRequest", "idempotency_key", "new_id", "prepare_run")
