"""`configure(...)`: the trigger.config equivalent, for the default engine or an explicit one.

>>> nbtasks.configure(on_failure=notify, retry={"max_attempts": 5}, machine="small-1x")  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._durations import HORIZON
from ._errors import ConfigurationError
from ._models import check_machine, parse_retry
from ._payload import check_limits, reset_limits, set_limits

if TYPE_CHECKING:
    from ._engine import Engine

OPTIONS = ("store", "on_start", "on_success", "on_failure", "retry", "machine",
           "concurrency_limit", "executor", "resume", "log_level", "clock", "loop_block_warning",
           "limits", "defer_gc")

_lock = threading.Lock()
_default: Engine | None = None
_pending: dict[str, Any] = {}


def _check(options: dict[str, Any]) -> None:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"configure: unknown option(s) {sorted(unknown)}; valid: {', '.join(OPTIONS)}")
    for hook in ("on_start", "on_success", "on_failure"):
        fn = options.get(hook)
        if fn is not None and not callable(fn):
            raise ConfigurationError(f"configure: {hook} must be callable")
    if "retry" in options:
        parse_retry(options["retry"], where="configure: retry")
    if "machine" in options:
        check_machine(options["machine"], where="configure: machine")
    check_loop_block_warning(options.get("loop_block_warning", 0), where="configure")
    check_defer_gc(options.get("defer_gc", True), where="configure")
    if "limits" in options:
        check_limits(options["limits"], where="configure: limits")
    if "log_level" in options and options["log_level"] not in ("none", "error", "warn", "info",
                                                                "debug"):
        raise ConfigurationError("configure: log_level must be none|error|warn|info|debug")


def check_loop_block_warning(warn: Any, *, where: str) -> float:
    """Finite seconds >= 0 (0 turns the warning off): the threshold of the loop watch."""
    if isinstance(warn, bool) or not isinstance(warn, int | float) or not 0 <= warn <= HORIZON:
        raise ConfigurationError(  # `not 0 <= x` is also true for NaN
            f"{where}: loop_block_warning must be finite seconds >= 0 (0 turns it off), "
            f"got {warn!r}")
    return float(warn)


def check_defer_gc(value: Any, *, where: str) -> bool:
    """True or False: whether an engine puts full garbage collections off during a burst."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where}: defer_gc must be True or False, got {value!r}")
    return value


def apply_to_engine(engine: Engine, options: dict[str, Any]) -> None:
    """Apply everything but `store`/`clock` (those choose the engine itself)."""
    _check(options)
    if "store" in options or "clock" in options:
        raise ConfigurationError("configure: store and clock are fixed when an Engine is created")
    cfg = engine.config
    if "limits" in options:
        set_limits(options["limits"])
    for hook in ("on_start", "on_success", "on_failure"):
        if hook in options:
            setattr(cfg.hooks, hook, options[hook])
    if "retry" in options:
        cfg.retry = parse_retry(options["retry"], where="configure: retry")
    if "machine" in options:
        cfg.machine = options["machine"]
    if "resume" in options:
        cfg.resume = bool(options["resume"])
    if "defer_gc" in options:
        cfg.defer_gc = options["defer_gc"]
        if not cfg.defer_gc:
            engine.on_loop(engine.scheduler.end_burst)
    if "loop_block_warning" in options:
        cfg.loop_block_warning = float(options["loop_block_warning"])
        engine.on_loop(setattr, engine.scheduler.watch, "threshold", cfg.loop_block_warning)
    if "log_level" in options:
        from ._context import _Logger

        _Logger.level = options["log_level"]
    if "executor" in options:
        old, engine.preset_executor = engine.preset_executor, options["executor"]
        if old is not None and old is not options["executor"]:
            # Its workers go now: an attempt still running there fails like a crashed worker
            # and retries on the new executor under its task's policy.
            def close_old() -> None:
                engine.runtime.loop.create_task(old.close())

            engine.runtime.inbox.post(close_old)
    if "concurrency_limit" in options:
        from ._engine import _check_limit

        limit = _check_limit(options["concurrency_limit"])
        cfg.concurrency_limit = limit

        def _apply() -> None:
            engine.scheduler.dispatcher.limit = limit
            engine.scheduler.dispatcher.pump()

        engine.on_loop(_apply)


def default_engine() -> Engine:
    """The engine behind module-level calls; created on first use from configure()'s options."""
    global _default
    if _default is not None and not _default.closed:
        return _default
    with _lock:
        if _default is None or _default.closed:
            from ._engine import Engine
            from ._tasks import DEFAULT_REGISTRY

            opts = dict(_pending)
            store = opts.pop("store", None)
            clock = opts.pop("clock", None)
            log_level = opts.pop("log_level", None)
            executor = opts.pop("executor", None)
            opts.pop("limits", None)  # process-wide, applied by configure() itself
            eng = Engine(store, clock=clock, registry=DEFAULT_REGISTRY, executor=executor, **opts)
            if log_level is not None:
                apply_to_engine(eng, {"log_level": log_level})
            _default = eng
        return _default


def configure(**options: Any) -> None:
    """Set hooks, defaults, executor and store for the module-level API.

    Options: store (path or ":memory:"), on_start, on_success, on_failure, retry, machine,
    concurrency_limit, executor, resume, log_level, clock, loop_block_warning (seconds; 0 turns
    the blocked-loop warning off), defer_gc (False: leave the garbage collector alone during a
    burst of runs; see nbtasks._collector), limits (a dict of size limits, e.g.
    `{"payload_bytes": 10 * 1024**2}`: payload_bytes, output_bytes, metadata_bytes,
    token_data_bytes, key_chars; process-wide, see nbtasks._payload.Limits). Changing `store`
    or `clock` after the default engine started closes it and starts a new one on the next call.
    """
    global _default
    _check(options)
    if "limits" in options:
        set_limits(options["limits"])
    with _lock:
        _pending.update(options)
        eng = _default
    if eng is None or eng.closed:
        return
    if "store" in options or "clock" in options:
        eng.close()
        with _lock:
            _default = None
        return
    apply_to_engine(eng, options)


def reset() -> None:
    """Close the default engine and forget configure()'s options (tests, and notebook resets)."""
    global _default
    with _lock:
        eng, _default = _default, None
        _pending.clear()
    reset_limits()
    if eng is not None:
        eng.close()
