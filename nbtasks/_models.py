"""Option and record models (pydantic): validated once where the user hands them over.

Options are small frozen models instead of thirty keyword arguments. They are validated at
definition or trigger time in the caller, never per event inside the engine.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._durations import HORIZON
from ._errors import ConfigurationError
from ._payload import MAX_METADATA_BYTES as MAX_METADATA_BYTES  # the default, re-exported
from ._payload import check_text, encodable
from ._status import EXECUTING_LIKE, FAILED_LIKE, FINAL, QUEUED_LIKE, RunStatus


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachinePreset(_Options):
    """A machine size: `cpu` in vCPUs and `memory` in GB (Trigger.dev's machine table).

    A GB is 10**9 bytes, everywhere: the pools' memory limits, and the MEMORY resource asked of
    a Dask worker, so `dask worker --resources "CPU=4 MEMORY=8e9"` (Dask's "8GB") holds a
    `large-1x` run.
    """

    name: str
    cpu: float
    memory: float

    @property
    def memory_bytes(self) -> int:
        return round(self.memory * 10**9)


#: `kernel` is nbtasks' own default: the run stays in the notebook's process.
MACHINES: dict[str, MachinePreset] = {
    p.name: p
    for p in (
        MachinePreset(name="kernel", cpu=0, memory=0),
        MachinePreset(name="micro", cpu=0.25, memory=0.25),
        MachinePreset(name="small-1x", cpu=0.5, memory=0.5),
        MachinePreset(name="small-2x", cpu=1, memory=1),
        MachinePreset(name="medium-1x", cpu=1, memory=2),
        MachinePreset(name="medium-2x", cpu=2, memory=4),
        MachinePreset(name="large-1x", cpu=4, memory=8),
        MachinePreset(name="large-2x", cpu=8, memory=16),
    )
}


def check_machine(name: object, *, where: str = "machine") -> str:
    """Return a preset name, or raise naming the presets that exist."""
    if not isinstance(name, str) or name not in MACHINES:
        raise ConfigurationError(
            f"{where}: {name!r} is not a machine preset; choose one of {', '.join(MACHINES)}"
        )
    return name


class OutOfMemoryOptions(_Options):
    """`retry.out_of_memory`: move the run to a bigger preset after an OOM."""

    machine: str | None = None

    @field_validator("machine")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return None if v is None else check_machine(v, where="retry.out_of_memory.machine")


#: Durations in options stop at the horizon (about 10 years), as everywhere else.
_HORIZON_MS = int(HORIZON * 1000)


class RetryOptions(_Options):
    """Trigger.dev's RetryOptions; defaults: docs/design.md, decision 1 (3 tries, factor 2, 1s..60s)."""

    max_attempts: int = Field(3, ge=1, le=250, strict=True)
    #: At most 10: factor ** 249 (250 attempts) must stay a float, or the delay overflows.
    factor: float = Field(2.0, gt=0, le=10, strict=True, allow_inf_nan=False)
    min_timeout_in_ms: int = Field(1000, ge=0, le=_HORIZON_MS, strict=True)
    max_timeout_in_ms: int = Field(60000, ge=0, le=_HORIZON_MS, strict=True)
    randomize: bool = Field(True, strict=True)
    out_of_memory: OutOfMemoryOptions | None = None


def _explain(exc: ValidationError) -> str:
    """pydantic's errors as "option: what is wrong, got <value>" (the value cut short)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        got = repr(err.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        msg = f"{err['msg']}, got {got}" if "input" in err else err["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


OptionsT = TypeVar("OptionsT", bound=_Options)


def _parse(model: type[OptionsT], value: object, where: str, expected: str) -> OptionsT | None:
    """None stays None, a model passes through, a dict is validated; anything else is an error."""
    if value is None:
        return None
    if isinstance(value, model):
        return value
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: expected {expected}, got {value!r}")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ConfigurationError(f"{where}: {_explain(exc)}") from None


def parse_retry(value: object, *, where: str = "retry") -> RetryOptions | None:
    """None means no retries; a dict is merged over the defaults."""
    return _parse(RetryOptions, value, where, "a dict of retry options")


_QUEUE_NAME = re.compile(r"[^A-Za-z0-9_\-/]")


class QueueOptions(_Options):
    """A queue: `concurrency_limit` per concurrency key (0 pauses), `total` caps all keys together."""

    name: str | None = None
    concurrency_limit: int | None = Field(None, ge=0, le=1000, strict=True)
    total: int | None = Field(None, ge=0, le=2**31 - 1, strict=True)

    @field_validator("name")
    @classmethod
    def _sanitise(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not encodable(v):
            raise ValueError(f"{v!r} holds a lone surrogate, which can't be stored as UTF-8")
        clean = _QUEUE_NAME.sub("", v)[:128]
        if not clean:
            raise ValueError(f"{v!r} has no usable characters (A-Z a-z 0-9 _ - /)")
        return clean


def parse_queue(value: object, *, where: str = "queue") -> QueueOptions | None:
    return _parse(QueueOptions, value, where, "a dict or nbtasks.queue(...)")


MAX_TAGS = 10
MAX_TAG_LENGTH = 128


def check_tags(tags: object, *, where: str = "tags", existing: int = 0,
               count: bool = True) -> list[str]:
    """Normalise tags: a string or a list; blanks and duplicates dropped; 10 of <=128 chars.

    A tag must be a str SQLite can store: one holding a lone surrogate is refused. `count=False`
    leaves the 10-tag rule to the caller (tags.add logs it instead of raising).
    """
    if tags is None:
        return []
    items = [tags] if isinstance(tags, str) else tags
    if not isinstance(items, list | tuple):
        raise ConfigurationError(f"{where}: expected a string or a list of strings, got {tags!r}")
    out: list[str] = []
    for t in items:
        if not isinstance(t, str):
            raise ConfigurationError(f"{where}: tag {t!r} is not a string")
        t = t.strip()
        if not t or t in out:
            continue
        if len(t) > MAX_TAG_LENGTH:
            raise ConfigurationError(f"{where}: tag {t[:20]!r}... is over {MAX_TAG_LENGTH} chars")
        check_text(t, where=f"{where}: tag")
        out.append(t)
    if count and len(out) + existing > MAX_TAGS:
        raise ConfigurationError(
            f"{where}: runs can only have {MAX_TAGS} tags, you're trying to set {len(out) + existing}"
        )
    return out


class TriggerOptions(_Options):
    """Per-trigger options (Trigger.dev's trigger options plus v4's priority). Validated in the caller.

    Numbers are strict: `True`, "3" or NaN where a number belongs is refused, not coerced.
    `delay`, `ttl` and `idempotency_key_ttl` are checked by the duration parsers (see
    nbtasks._durations), which refuse the same and anything past the ~10-year horizon.
    """

    delay: Any = None
    ttl: Any = None
    tags: list[str] | str | None = None
    idempotency_key: str | list[str] | None = None
    idempotency_key_ttl: Any = None
    concurrency_key: str | None = None
    queue: Any = None  # a name or queue options: checked by prepare_run, for a plain message
    machine: str | None = None
    max_attempts: int | None = Field(None, ge=0, le=250, strict=True)
    max_duration: float | None = Field(None, gt=0, le=HORIZON, strict=True, allow_inf_nan=False)
    metadata: dict[str, Any] | None = None
    priority: float = Field(0, ge=0, le=HORIZON, strict=True, allow_inf_nan=False)

    @field_validator("machine")
    @classmethod
    def _machine(cls, v: str | None) -> str | None:
        return None if v is None else check_machine(v, where="machine")


def parse_trigger_options(options: dict[str, Any], *, where: str = "trigger") -> TriggerOptions:
    unknown = set(options) - set(TriggerOptions.model_fields)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown option(s) {sorted(unknown)}; "
            f"valid options are {sorted(TriggerOptions.model_fields)}"
        )
    try:
        return TriggerOptions.model_validate(options)
    except ValidationError as exc:
        raise ConfigurationError(f"{where}: {_explain(exc)}") from None


class Attempt(BaseModel):
    """One attempt of a run, as stored."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    number: int
    status: Literal["EXECUTING", "COMPLETED", "FAILED", "CANCELED"]
    started_at: datetime | None
    finished_at: datetime | None
    machine: str
    queue: str
    error: dict[str, Any] | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds() * 1000


class Run(BaseModel):
    """A frozen snapshot of a run. Get a fresh one with `runs.retrieve(id)`."""

    model_config = ConfigDict(frozen=True)

    id: str
    task_id: str
    status: RunStatus
    payload: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    attempt_count: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    delay_until: datetime | None = None
    tags: list[str] = []
    metadata: dict[str, Any] = {}
    parent_id: str | None = None
    root_id: str | None = None
    batch_id: str | None = None
    is_test: bool = False
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    queue: str = ""
    machine: str = "kernel"
    attempts: list[Attempt] = []
    replayed_from: str | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or self.updated_at
        return None if end is None else (end - self.started_at).total_seconds() * 1000

    @property
    def is_queued(self) -> bool:
        return self.status in QUEUED_LIKE

    @property
    def is_executing(self) -> bool:
        return self.status in EXECUTING_LIKE

    @property
    def is_completed(self) -> bool:
        return self.status in FINAL

    @property
    def is_success(self) -> bool:
        return self.status is RunStatus.COMPLETED

    @property
    def is_failed(self) -> bool:
        return self.status in FAILED_LIKE

    @property
    def is_cancelled(self) -> bool:
        return self.status is RunStatus.CANCELED

    def _repr_html_(self) -> str:
        from .notebook.display import run_html

        return run_html(self)

    def _ipython_display_(self) -> None:
        """A cell's last value: a live status line while the run goes on, else the HTML."""
        from .notebook.display import display_run

        display_run(self)
