"""Every exception nbtasks raises, in one tree.

```
NbtasksError
├── ConfigurationError (ValueError)      bad task/trigger/queue/retry/machine option, duration, cron
│   └── PayloadValidationError            a schema_task payload failed its pydantic model
├── PayloadSerializationError (TypeError) a payload that JSON cannot hold; names the path
├── UnknownTaskError (LookupError)        trigger by an id no cell has defined
├── RunNotFoundError (LookupError)        runs.retrieve() of an id the store does not hold
├── EngineError (RuntimeError)            the engine was used wrongly (closed, or blocked from its own loop)
├── StoreError (OSError)                  the store can't be opened, trusted or written; names its path
├── RunWaitTimeoutError (TimeoutError)    handle.wait(timeout=...) ran out; the run goes on
└── TaskRunError                          a failure recorded on a run (what Result.error holds)
    ├── SubtaskUnwrapError                Result.unwrap() on a failed run
    ├── OutOfMemoryError                  a worker went past its machine's RAM
    ├── WorkerCrashedError                a worker process died mid-attempt
    ├── KernelRestartError                the kernel died while the attempt was executing
    ├── MaxDurationExceededError (TimeoutError)  the attempt ran past max_duration
    ├── WaitTimeoutError (TimeoutError)   a wait token timed out
    └── OutputSerializationError (TypeError)  the run returned something JSON cannot hold

AbortTaskRunError   a control-flow signal, deliberately *outside* the root: `except NbtasksError`
                    in user code must never swallow a request to stop retrying.
```
"""

from __future__ import annotations

from typing import Any


class NbtasksError(Exception):
    """Root of every error nbtasks raises on its own account."""


class ConfigurationError(NbtasksError, ValueError):
    """Raised in the caller for a bad option, preset, duration, cron or limit."""


class PayloadValidationError(ConfigurationError):
    """Raised by schema_task.trigger() when the payload fails the task's pydantic schema."""


class PayloadSerializationError(NbtasksError, TypeError):
    """Raised by trigger() when the payload cannot be stored as JSON; the message names the path."""


class UnknownTaskError(NbtasksError, LookupError):
    """Raised by tasks.trigger("id") when no task with that id is defined on the engine."""


class RunNotFoundError(NbtasksError, LookupError):
    """Raised by runs.retrieve()/cancel()/replay() for a run id the store does not hold."""


class EngineError(NbtasksError, RuntimeError):
    """Raised when the engine is used wrongly: after close, or a blocking call on its own loop."""


class StoreError(NbtasksError, OSError):
    """Raised when the store can't be opened, trusted or written: SQLite's own message and the path."""


class RunWaitTimeoutError(NbtasksError, TimeoutError):
    """Raised by RunHandle.wait(timeout=...) when the run is not final in time. The run goes on."""


class TaskRunError(NbtasksError):
    """A failure recorded on a run. `Result.error` holds one, rebuilt from the stored JSON."""

    def __init__(self, message: str, *, type_name: str | None = None, traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.type_name = type_name or type(self).__name__
        self.traceback = traceback

    def __str__(self) -> str:
        return self.message


class SubtaskUnwrapError(TaskRunError):
    """Raised by Result.unwrap() on a failed run: "Error in <task id>: <message>"."""

    def __init__(self, task_id: str, run_id: str, cause: BaseException) -> None:
        super().__init__(f"Error in {task_id}: {cause}")
        self.task_id = task_id
        self.run_id = run_id
        self.cause = cause
        self.__cause__ = cause


class OutOfMemoryError(TaskRunError):
    """Recorded when a worker exceeds its machine preset's RAM; raise it yourself to ask for one."""


class WorkerCrashedError(TaskRunError):
    """Recorded when a worker process dies mid-attempt (a signal or a non-zero exit)."""


class KernelRestartError(TaskRunError):
    """Recorded on an attempt that was executing when its kernel died or restarted."""


class MaxDurationExceededError(TaskRunError, TimeoutError):
    """Recorded when an attempt runs past its max_duration (wall-clock seconds)."""


class WaitTimeoutError(TaskRunError, TimeoutError):
    """Returned by wait.for_token() when the token's timeout passes before completion."""


class OutputSerializationError(TaskRunError, TypeError):
    """Recorded when a run returns an output JSON cannot hold."""


class AbortTaskRunError(Exception):
    """Raise inside a run to fail it at once with no further retries (not an NbtasksError)."""


#: Error types rebuilt as their own class when read back from the store.
_KNOWN: dict[str, type[TaskRunError]] = {
    cls.__name__: cls
    for cls in (
        OutOfMemoryError,
        WorkerCrashedError,
        KernelRestartError,
        MaxDurationExceededError,
        WaitTimeoutError,
        OutputSerializationError,
    )
}


def error_from_record(record: dict[str, Any]) -> TaskRunError:
    """Rebuild a stored error dict as an exception; never unpickles, only reads JSON fields."""
    type_name = str(record.get("type") or "Error")
    cls = _KNOWN.get(type_name, TaskRunError)
    return cls(
        str(record.get("message", "")),
        type_name=type_name,
        traceback=str(record.get("traceback", "")),
    )
