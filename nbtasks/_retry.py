"""Retry arithmetic: pure functions of the options, the attempt number and the time.

`next_delay` is Trigger.dev's `calculateNextRetryDelay` with JavaScript's
half-up rounding; `decide` turns a failed attempt plus `handle_error`'s answer into one decision
(Trigger.dev's policy, with docs/design.md's rule that max_attempts always holds).

>>> opts = RetryOptions(max_attempts=5, factor=1.5, min_timeout_in_ms=375, randomize=False)
>>> [next_delay(opts, a) for a in range(1, 6)]
[375, 563, 844, 1266, None]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._errors import ConfigurationError, OutOfMemoryError
from ._models import RetryOptions, parse_retry
from ._status import RunStatus


def next_delay(opts: RetryOptions, attempt: int, rand: float | None = None) -> int | None:
    """Milliseconds to wait after attempt `attempt` (1-based) failed, or None for no retry."""
    if attempt >= opts.max_attempts:
        return None
    r = 1.0 + (random.random() if rand is None else rand) if opts.randomize else 1.0
    raw = min(opts.max_timeout_in_ms, r * opts.min_timeout_in_ms * opts.factor ** (attempt - 1))
    return math.floor(raw + 0.5)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What happens after a failed attempt: retry at `retry_at` (epoch s), or stop with `error`."""

    retry_at: float | None
    error: BaseException
    skipped: bool = False
    machine: str | None = None  # the preset the next attempt moves to (out-of-memory retry)

    @property
    def final_status(self) -> RunStatus:
        """FAILED for user errors; CRASHED for out-of-memory, as Trigger.dev records it."""
        return RunStatus.CRASHED if isinstance(self.error, OutOfMemoryError) else RunStatus.FAILED

    @property
    def retrying(self) -> bool:
        return self.retry_at is not None


def effective_options(opts: RetryOptions | None, max_attempts: int | None) -> RetryOptions | None:
    """The task's retry options with a trigger's `max_attempts` override applied (per run).

    A task with `retry=None` is never retried, whatever the trigger asks (as in Trigger.dev).
    """
    if opts is None:
        return None
    if max_attempts:
        return opts.model_copy(update={"max_attempts": max(1, max_attempts)})
    return opts


def decide(
    opts: RetryOptions | None,
    attempt: int,
    error: BaseException,
    now: float,
    answer: dict[str, Any] | None,
    *,
    no_retry: bool = False,
    machine: str | None = None,
) -> RetryDecision:
    """Combine the policy with handle_error's answer. `no_retry` marks errors never retried.

    Precedence follows Trigger.dev: skip_retrying > retry_at > retry_delay_in_ms > retry.
    Unlike v3, max_attempts is enforced even when handle_error names a time (docs/design.md, decision 1).
    """
    if answer is not None and not isinstance(answer, dict):
        raise ConfigurationError(
            f"handle_error must return None or a dict, not {type(answer).__name__}"
        )
    err = error
    if answer and isinstance(answer.get("error"), BaseException):
        err = answer["error"]
    if no_retry or opts is None:
        return RetryDecision(None, err, skipped=True)
    if isinstance(error, OutOfMemoryError):
        # Retrying on the same machine would run out of memory again.
        bigger = opts.out_of_memory.machine if opts.out_of_memory else None
        if bigger is None or bigger == machine:
            return RetryDecision(None, err, skipped=True)
        delay = next_delay(opts, attempt)
        if delay is None:
            return RetryDecision(None, err)
        return RetryDecision(now + delay / 1000, err, machine=bigger)
    attempts_left = attempt < opts.max_attempts
    if answer is not None:
        unknown = set(answer) - {"skip_retrying", "retry_at", "retry_delay_in_ms", "retry", "error"}
        if unknown:
            raise ConfigurationError(f"handle_error returned unknown keys: {sorted(unknown)}")
        if answer.get("skip_retrying"):
            return RetryDecision(None, err, skipped=True)
        if answer.get("retry_at") is not None:
            at = answer["retry_at"]
            if not isinstance(at, datetime):
                raise ConfigurationError("handle_error's retry_at must be a datetime")
            return RetryDecision(at.timestamp() if attempts_left else None, err)
        if answer.get("retry_delay_in_ms") is not None:
            ms = int(answer["retry_delay_in_ms"])
            return RetryDecision(now + ms / 1000 if attempts_left else None, err)
        if answer.get("retry") is not None:
            custom = parse_retry(answer["retry"], where="handle_error's retry")
            if custom is None:
                return RetryDecision(None, err)
            delay = next_delay(custom, attempt)  # the run's max_attempts still caps it
            retry_at = now + delay / 1000 if delay is not None and attempts_left else None
            return RetryDecision(retry_at, err)
        return RetryDecision(None, err)  # {} or {"error": e} alone: no retry (as in Trigger.dev)
    delay = next_delay(opts, attempt)
    return RetryDecision(now + delay / 1000 if delay is not None else None, err)
