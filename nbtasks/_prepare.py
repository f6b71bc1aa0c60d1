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


class Prepared:
    """What a trigger's options make of a run, resolved and validated once.

    A batch's items without options of their own share one: 500 items pay for the batch's
    options (a pydantic validation, an idempotency key's hash, a queue's parse) once, not once
    each. Relative times (a delay, an idempotency key's TTL) are resolved against the one
    `now` of the call, so every run made from it starts the same.
    """

    __slots__ = ("concurrency_key", "delay_until", "idempotency_expires_at", "idempotency_key",
                 "is_test", "machine", "max_attempts", "max_duration", "metadata", "options",
                 "parent_id", "priority", "queue", "queue_request", "root_id", "tags", "ttl")

    def __init__(self, queue: str, machine: str | None, is_test: bool) -> None:
        self.queue = queue
        self.machine = machine
        self.is_test = is_test
        #: Any trigger option was given: the fields below are set (else left at RunState's).
        self.options = False
        self.queue_request: QueueRequest | None = None
        self.parent_id: str | None = None
        self.root_id: str | None = None
        self.delay_until: float | None = None
        self.ttl: float | None = None
        self.tags: list[str] = []
        self.metadata: dict[str, Any] | None = None
        self.idempotency_key: str | None = None
        self.idempotency_expires_at: float | None = None
        self.concurrency_key: str | None = None
        self.max_attempts: int | None = None
        self.max_duration: float | None = None
        self.priority = 0.0


#: A definition's runs without options, outside a run: (definition, its Prepared), by the
#: definition's id and machine. Shared by every such trigger (`new_run` only reads it).
_PLAIN: dict[tuple[int, str | None], tuple[TaskDefinition, Prepared]] = {}


def resolve(engine: Engine, defn: TaskDefinition, options: dict[str, Any],
            scope: AttemptScope | None, now: float, *, is_test: bool = False) -> Prepared:
    """Validate `options` (raising in the caller, naming the option) and resolve them."""
    machine = defn.machine or engine.config.machine
    if not options and scope is None and not is_test:  # a plain trigger: nothing to resolve
        key = (id(defn), machine)
        hit = _PLAIN.get(key)
        if hit is None or hit[0] is not defn:
            if len(_PLAIN) > 1024:
                _PLAIN.clear()
            hit = _PLAIN[key] = (defn, Prepared(defn.queue_name, machine, False))
        return hit[1]
    p = Prepared(defn.queue_name, machine, is_test)
    if options:
        o = parse_trigger_options(options, where=f"{defn.id}.trigger")
        p.options = True
        if o.delay is not None:
            p.delay_until = parse_delay(o.delay, now, where="delay")
        p.ttl = parse_ttl(o.ttl)
        p.tags = check_tags(o.tags)
        if o.metadata is not None:
            try:
                dumps(o.metadata, what="metadata")
            except PayloadSerializationError as exc:  # an option: a ConfigurationError
                raise ConfigurationError(str(exc)) from None
            p.metadata = dict(o.metadata)
        if o.idempotency_key is not None:
            p.idempotency_key = _normalise_key(o.idempotency_key)
            ttl = (DEFAULT_IDEMPOTENCY_TTL if o.idempotency_key_ttl is None
                   else parse_duration(o.idempotency_key_ttl, where="idempotency_key_ttl"))
            p.idempotency_expires_at = now + ttl
        elif o.idempotency_key_ttl is not None:
            raise ConfigurationError("idempotency_key_ttl needs an idempotency_key")
        if o.concurrency_key is not None:
            p.concurrency_key = check_text(o.concurrency_key, where="concurrency_key",
                                           max_chars=LIMITS.key_chars)
        if isinstance(o.queue, str):
            parsed = parse_queue({"name": check_text(o.queue, where="queue")}, where="queue")
            p.queue = (parsed.name if parsed else None) or defn.queue_name
        elif o.queue is not None:
            q = parse_queue(o.queue, where="queue")
            assert q is not None
            name = q.name or defn.queue_name
            p.queue = name
            p.queue_request = (name, q.concurrency_limit, q.total)
        if o.machine is not None:
            p.machine = o.machine
        p.max_attempts = o.max_attempts or None
        p.max_duration = o.max_duration
        p.priority = o.priority
    if scope is not None:
        p.parent_id = scope.ctx.run.id
        p.root_id = scope.ctx.run.root_id or scope.ctx.run.id
        p.is_test = is_test or scope.ctx.run.is_test
    return p


def new_run(p: Prepared, task_id: str, payload_json: str, now: float, *,
            batch_id: str | None = None, replayed_from: str | None = None) -> RunState:
    """A new run made from resolved options: only attribute copies, for each of a batch's runs.
    Its tags and metadata are its own copies (a run's are replaced or changed on its own)."""
    run = RunState(new_id("run_"), task_id, payload_json, now)
    run.queue = p.queue
    run.machine = p.machine
    run.batch_id = batch_id
    run.replayed_from = replayed_from
    run.is_test = p.is_test
    if p.parent_id is not None:
        run.parent_id = p.parent_id
        run.root_id = p.root_id
    if p.options:
        if p.delay_until is not None:
            run.delay_until = run.queued_at = p.delay_until
            run.status = RunStatus.DELAYED
        run.ttl = p.ttl
        run.tags = list(p.tags)
        if p.metadata is not None:
            run.metadata = dict(p.metadata)
        run.idempotency_key = p.idempotency_key
        run.idempotency_expires_at = p.idempotency_expires_at
        run.concurrency_key = p.concurrency_key
        run.max_attempts = p.max_attempts
        run.max_duration = p.max_duration
        run.priority = p.priority
    return run


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
    """One trigger call's run: its options resolved (`resolve`), the run made (`new_run`)."""
    now = engine.clock.now()
    p = resolve(engine, defn, options, scope, now, is_test=is_test)
    return (new_run(p, defn.id, payload_json, now, batch_id=batch_id,
                    replayed_from=replayed_from), p.queue_request)


__all__ = ("Prepared", "QueueRequest", "idempotency_key", "new_id", "new_run",
           "prepare_run", "resolve")
