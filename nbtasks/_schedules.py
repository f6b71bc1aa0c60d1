"""`nbtasks.schedules`: tasks that run on a cron schedule.

>>> @nbtasks.schedules.task(id="daily-report", cron="0 9 * * 1-5")            # doctest: +SKIP
... def daily_report(payload, ctx):
...     print("tick at", payload.timestamp, "next", payload.upcoming[0])
>>> nbtasks.schedules.create(task="daily-report", cron={"pattern": "0 8 * * *",
...                          "timezone": "Europe/London"}, deduplication_key="uk-morning")

A declarative schedule comes from `cron=` and is synced whenever its cell runs (defining the task
again without `cron` deletes it); imperative ones are created, updated and deleted through this
API, one per deduplication key. Both live in the store, so they outlast the kernel.

Each tick is a timer on the engine's clock. When it fires, the kernel claims the tick with one
conditional UPDATE (the tick's time must be later than the schedule's last one), so when two
kernels share a file only one runs it; a kernel claims only ticks of tasks it has defined.
Ticks missed while no kernel was running are not back-filled: after a restart the next tick
fires, and its `last_timestamp` is the last tick that did.
"""

from __future__ import annotations

import builtins
import zoneinfo
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ._clock import TimerHandle, to_datetime
from ._durations import cron_next, parse_timezone, validate_cron
from ._errors import ConfigurationError
from ._runstate import new_id
from ._schedule_list import ScheduleList
from ._tasks import Task, TaskDefinition
from .stores._base import WriteBatch

if TYPE_CHECKING:
    from ._engine import Engine

_COLUMNS = ("id, task_id, type, cron, timezone, external_id, deduplication_key, active, "
            "last_timestamp, created_at, updated_at")
_DECLARED = "declarative:"  # deduplication-key prefix of a task's one declarative schedule


class ScheduledPayload(BaseModel):
    """What a scheduled run receives. Every field has a default, so a test trigger needs none.

    >>> payload.timestamp, payload["timestamp"], payload.get("external_id", "none")  # doctest: +SKIP

    Attributes and keys both work: the dashboard shows the payload as the JSON object that is
    stored, so people write `payload["timestamp"]` as often as `payload.timestamp`. Either form
    gives the same Python value (a datetime, not the stored string). `dict(payload)` also works.
    """

    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    last_timestamp: datetime | None = None
    timezone: str = "UTC"
    schedule_id: str = "sched_1234"  # Trigger.dev's id for a dashboard test run
    external_id: str | None = None
    type: Literal["DECLARATIVE", "IMPERATIVE"] = "IMPERATIVE"
    upcoming: list[datetime] = Field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(f"{key!r}: a scheduled payload has only "
                           f"{', '.join(type(self).model_fields)}")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields

    def get(self, key: str, default: Any = None) -> Any:
        """`payload.get("external_id")`, as on the dict the dashboard shows."""
        return getattr(self, key) if key in type(self).model_fields else default

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in type(self).model_fields]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in type(self).model_fields]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A stored schedule, as `create`, `retrieve`, `list` and friends return it."""

    id: str
    task: str
    type: str
    cron: str
    timezone: str
    external_id: str | None
    deduplication_key: str | None
    active: bool
    last_timestamp: datetime | None
    next_run: datetime | None
    created_at: datetime
    updated_at: datetime | None

    def upcoming(self, count: int = 10) -> list[datetime]:
        """The next `count` tick times from now (empty when inactive)."""
        if self.next_run is None:
            return []
        start = self.next_run.timestamp() - 1e-3
        return [datetime.fromtimestamp(t, UTC) for t in cron_next(self.cron, self.timezone,
                                                                   start, count)]


def parse_cron(cron: Any, timezone: str | None = None, *,
               where: str = "cron") -> tuple[str, str]:
    """`"0 9 * * 1-5"` or `{"pattern": ..., "timezone": ...}` -> (pattern, IANA zone)."""
    if isinstance(cron, dict):
        unknown = set(cron) - {"pattern", "timezone"}
        if unknown or "pattern" not in cron:
            raise ConfigurationError(
                f"{where}: a dict needs 'pattern' and may have 'timezone'; got {sorted(cron)}")
        if timezone is not None and cron.get("timezone", timezone) != timezone:
            raise ConfigurationError(f"{where}: two different timezones given")
        pattern, zone = cron["pattern"], cron.get("timezone", timezone)
    else:
        pattern, zone = cron, timezone
    validate_cron(pattern, where=where)
    zone = "UTC" if zone is None else zone
    if not isinstance(zone, str):
        raise ConfigurationError(f"{where}: timezone must be an IANA name such as 'Europe/London'")
    parse_timezone(zone, where=f"{where}: timezone")
    return pattern, zone


class ScheduleBook:
    """An engine's schedule timers. Everything but the constructor runs on the engine loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.timers: dict[str, TimerHandle] = {}
        self.declarative: set[str] = set()  # task ids that have a declarative schedule
        self._declaring: set[str] = set()
        engine.registry.listen(self.on_define)

    def close(self) -> None:
        self.engine.registry.unlisten(self.on_define)
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()

    def restore(self) -> None:
        """At engine start: arm every active schedule for its next tick after now."""
        _, rows = self.engine.store.select(
            "SELECT id, cron, timezone, active, type, task_id FROM schedules")
        for sid, cron, zone, active, kind, task_id in rows:
            if kind == "DECLARATIVE":
                self.declarative.add(task_id)
            if active:
                self.arm(sid, cron, zone)

    def arm(self, sid: str, cron: str, zone: str) -> None:
        self.disarm(sid)
        (when,) = cron_next(cron, zone, self.engine.clock.now())
        self.timers[sid] = self.engine.clock.call_at(when, partial(self._tick, sid, when))

    def disarm(self, sid: str) -> None:
        timer = self.timers.pop(sid, None)
        if timer is not None:
            timer.cancel()

    def _tick(self, sid: str, when: float) -> None:
        """A tick is due: claim it, trigger the run if this kernel won, arm the next one."""
        self.timers.pop(sid, None)
        store, eng = self.engine.store, self.engine
        if eng.closed:
            return
        rows = store.select(f"SELECT {_COLUMNS} FROM schedules WHERE id = ?", (sid,))[1]
        if not rows or not rows[0][7]:
            return  # deleted or deactivated, perhaps by another kernel
        sid, task_id, kind, cron, zone, external_id, _, _, last, _, _ = rows[0]
        defn = eng.registry.get(task_id)
        if defn is not None and self._claim(sid, when):
            payload = ScheduledPayload(
                timestamp=datetime.fromtimestamp(when, UTC), last_timestamp=to_datetime(last),
                timezone=zone, schedule_id=sid, external_id=external_id, type=kind,
                upcoming=[datetime.fromtimestamp(t, UTC) for t in cron_next(cron, zone, when, 10)])
            self._trigger(defn, payload)
        self.arm(sid, cron, zone)

    def _claim(self, sid: str, when: float) -> bool:
        """One conditional UPDATE: only the first kernel to move the schedule past `when` runs it.

        Written directly rather than through the group writer, because the answer is needed
        now; ticks are rare, so this short transaction is no hot path.
        """
        eng = self.engine
        eng.store.write(WriteBatch(statements=[(
            "UPDATE schedules SET last_timestamp = ?, claimed_by = ?, updated_at = ? "
            "WHERE id = ? AND active = 1 AND (last_timestamp IS NULL OR last_timestamp < ?)",
            (when, eng.owner, eng.clock.now(), sid, when))]))
        _, rows = eng.store.select(
            "SELECT claimed_by, last_timestamp FROM schedules WHERE id = ?", (sid,))
        return bool(rows) and rows[0][0] == eng.owner and rows[0][1] == when

    def _trigger(self, defn: TaskDefinition, payload: ScheduledPayload) -> None:
        eng = self.engine
        body = Task(defn, eng.registry).encode(payload.model_dump(mode="json"))
        run, queue = eng._prepare(defn, body, {})
        eng._submit(run, queue)

    # ---------------------------------------------------------------- declarative sync

    @contextmanager
    def declaring(self, task_id: str) -> Iterator[None]:
        self._declaring.add(task_id)
        try:
            yield
        finally:
            self._declaring.discard(task_id)

    def on_define(self, defn: TaskDefinition) -> None:
        """A task defined without `cron` loses the declarative schedule it had."""
        if defn.id in self.declarative and defn.id not in self._declaring \
                and not self.engine.closed:
            self.engine.runtime.call(self._drop_declarative, defn.id)

    async def _drop_declarative(self, task_id: str) -> None:
        _, rows = self.engine.store.select(
            "SELECT id FROM schedules WHERE type = 'DECLARATIVE' AND task_id = ?", (task_id,))
        for (sid,) in rows:
            self.disarm(sid)
        self.declarative.discard(task_id)
        self.engine.writer.statement(
            "DELETE FROM schedules WHERE type = 'DECLARATIVE' AND task_id = ?", (task_id,))
        await self.engine.writer.barrier()

    async def upsert(self, *, task_id: str, kind: str, cron: str, zone: str,
                     external_id: str | None, key: str) -> str:
        """Create the schedule with deduplication `key`, or update the one that has it."""
        eng = self.engine
        now = eng.clock.now()
        _, rows = eng.store.select(
            "SELECT id, active FROM schedules WHERE deduplication_key = ?", (key,))
        if rows:
            sid, active = rows[0]
            eng.writer.statement(
                "UPDATE schedules SET task_id = ?, cron = ?, timezone = ?, external_id = ?, "
                "updated_at = ? WHERE id = ?", (task_id, cron, zone, external_id, now, sid))
        else:
            sid, active = new_id("sched_"), 1
            eng.writer.statement(
                "INSERT INTO schedules (id, task_id, type, cron, timezone, external_id, "
                "deduplication_key, active, created_at, updated_at) VALUES (?,?,?,?,?,?,?,1,?,?)",
                (sid, task_id, kind, cron, zone, external_id, key, now, now))
        if kind == "DECLARATIVE":
            self.declarative.add(task_id)
        await eng.writer.barrier()
        if active:
            self.arm(sid, cron, zone)
        return str(sid)

    async def change(self, sid: str, sql: str, params: tuple[Any, ...]) -> None:
        """Apply an UPDATE or DELETE to one schedule, durably, and re-arm it from the store."""
        self.engine.writer.statement(sql, params)
        await self.engine.writer.barrier()
        _, rows = self.engine.store.select(
            "SELECT cron, timezone, active FROM schedules WHERE id = ?", (sid,))
        if rows and rows[0][2]:
            self.arm(sid, rows[0][0], rows[0][1])
        else:
            self.disarm(sid)


class SchedulesAPI:
    """Bound to one engine (`eng.schedules`) or the default one (`nbtasks.schedules`)."""

    #: The payload model, for a `schema_task` that an imperative schedule triggers.
    ScheduledPayload = ScheduledPayload

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine()

    @property
    def _book(self) -> ScheduleBook:
        return self.engine.schedule_book

    def task(self, *, id: str, cron: Any, run: Callable[..., Any] | None = None,
             **options: Any) -> Any:
        """A task with a declarative schedule; its payload is a `ScheduledPayload`.

        Decorator or `run=` form, with every `task()` option. The schedule is stored (or
        updated) when the task is defined; a bad cron or timezone raises ConfigurationError
        before anything is defined or stored.
        """
        pattern, zone = parse_cron(cron, where=f"schedules.task {id!r}: cron")

        def define(fn: Callable[..., Any]) -> Task[ScheduledPayload, Any]:
            eng = self.engine
            with self._book.declaring(id):
                defined: Task[ScheduledPayload, Any] = eng.task.schema_task(
                    id=id, schema=ScheduledPayload, run=fn, **options)
            eng.runtime.call(partial(self._book.upsert, task_id=id, kind="DECLARATIVE",
                                     cron=pattern, zone=zone, external_id=None,
                                     key=_DECLARED + id))
            return defined

        return define(run) if run is not None else define

    def create(self, *, task: str | Task[Any, Any], cron: Any, deduplication_key: str,
               external_id: str | None = None, timezone: str | None = None) -> Schedule:
        """An imperative schedule; a second create with the same key updates that one."""
        task_id = self._task_id(task, "schedules.create")
        pattern, zone = parse_cron(cron, timezone, where="schedules.create: cron")
        if not isinstance(deduplication_key, str) or not deduplication_key.strip() \
                or deduplication_key.startswith(_DECLARED):
            raise ConfigurationError("schedules.create: deduplication_key must be a non-empty "
                                     f"string not starting with {_DECLARED!r}")
        _check_external_id(external_id)
        sid = self.engine.runtime.call(partial(
            self._book.upsert, task_id=task_id, kind="IMPERATIVE", cron=pattern, zone=zone,
            external_id=external_id, key=deduplication_key))
        return self.retrieve(sid)

    def retrieve(self, schedule_id: str) -> Schedule:
        rows = self._select(" WHERE id = ?", (schedule_id,))
        if not rows:
            raise ConfigurationError(f"no schedule with id {schedule_id!r}")
        return rows[0]

    def list(self, *, task: str | Task[Any, Any] | None = None,
             active: bool | None = None) -> ScheduleList:
        """Every stored schedule, oldest first; optionally one task's, or (in)active ones.

        A list, shown as a table: HTML in a notebook, aligned text in a terminal."""
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if task is not None:
            where.append("task_id = ?")
            params.append(task if isinstance(task, str) else task.id)
        if active is not None:
            where.append("active = ?")
            params.append(int(active))
        return self._select(" WHERE " + " AND ".join(where) if where else "", tuple(params))

    def update(self, schedule_id: str, *, task: str | Task[Any, Any] | None = None,
               cron: Any = None, external_id: str | None = None,
               timezone: str | None = None) -> Schedule:
        """Change an imperative schedule (declarative ones change with their cell)."""
        old = self._imperative(schedule_id, "update")
        task_id = old.task if task is None else self._task_id(task, "schedules.update")
        if timezone is None and not (isinstance(cron, dict) and "timezone" in cron):
            timezone = old.timezone  # unchanged unless given
        pattern, zone = parse_cron(old.cron if cron is None else cron, timezone,
                                   where="schedules.update: cron")
        _check_external_id(external_id)
        ext = old.external_id if external_id is None else external_id
        self._change(schedule_id,
                     "UPDATE schedules SET task_id = ?, cron = ?, timezone = ?, external_id = ?, "
                     "updated_at = ? WHERE id = ?",
                     (task_id, pattern, zone, ext, self.engine.clock.now(), schedule_id))
        return self.retrieve(schedule_id)

    def activate(self, schedule_id: str) -> Schedule:
        return self._set_active(schedule_id, True)

    def deactivate(self, schedule_id: str) -> Schedule:
        return self._set_active(schedule_id, False)

    def delete(self, schedule_id: str) -> None:
        """Delete an imperative schedule (a declarative one goes when its cron is removed)."""
        self._imperative(schedule_id, "delete")
        self._change(schedule_id, "DELETE FROM schedules WHERE id = ?", (schedule_id,))

    @staticmethod
    def timezones() -> builtins.list[str]:
        """The IANA timezone names a schedule accepts."""
        return sorted(zoneinfo.available_timezones())

    # ---------------------------------------------------------------- helpers

    def _set_active(self, schedule_id: str, active: bool) -> Schedule:
        self.retrieve(schedule_id)
        self._change(schedule_id, "UPDATE schedules SET active = ?, updated_at = ? WHERE id = ?",
                     (int(active), self.engine.clock.now(), schedule_id))
        return self.retrieve(schedule_id)

    def _change(self, schedule_id: str, sql: str, params: tuple[Any, ...]) -> None:
        self.engine.runtime.call(self._book.change, schedule_id, sql, params)

    def _imperative(self, schedule_id: str, verb: str) -> Schedule:
        found = self.retrieve(schedule_id)
        if found.type != "IMPERATIVE":
            raise ConfigurationError(
                f"schedules.{verb}: {schedule_id} is declarative; edit the cron= of task "
                f"{found.task!r} and run its cell again")
        return found

    def _task_id(self, task: str | Task[Any, Any], where: str) -> str:
        task_id = task if isinstance(task, str) else getattr(task, "id", None)
        if not isinstance(task_id, str) or self.engine.registry.get(task_id) is None:
            raise ConfigurationError(f"{where}: no task {task!r} is defined in this kernel")
        return task_id

    def _select(self, where: str, params: tuple[Any, ...]) -> ScheduleList:
        eng = self.engine
        eng.runs._fresh()
        now = eng.clock.now()
        _, rows = eng.store.select(
            f"SELECT {_COLUMNS} FROM schedules{where} ORDER BY created_at, id", params)
        out = []
        for sid, task_id, kind, cron, zone, ext, key, active, last, created, updated in rows:
            nxt = cron_next(cron, zone, now)[0] if active else None
            out.append(Schedule(
                id=sid, task=task_id, type=kind, cron=cron, timezone=zone, external_id=ext,
                deduplication_key=None if kind == "DECLARATIVE" else key, active=bool(active),
                last_timestamp=to_datetime(last), next_run=to_datetime(nxt),
                created_at=datetime.fromtimestamp(created, UTC), updated_at=to_datetime(updated)))
        return ScheduleList(out, now)


def _check_external_id(external_id: Any) -> None:
    if external_id is not None and not isinstance(external_id, str):
        raise ConfigurationError("external_id must be a string")


def _default_engine() -> Engine:
    from ._configure import default_engine

    return default_engine()


schedules = SchedulesAPI(_default_engine)

__all__ = ("Schedule", "ScheduledPayload", "SchedulesAPI", "parse_cron", "schedules")
