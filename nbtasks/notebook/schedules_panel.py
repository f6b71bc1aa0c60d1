"""The Schedules tab: each schedule with its cron in words, timezone, next and last run and
active state, and buttons to activate, deactivate, trigger now and delete (delete asks first).

Rows are read from the store through `schedules.list()` only while the tab is open.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .._schedule_list import cron_words as cron_words  # re-exported: the tab's words
from ._ui import Guard, button, hide, make, message, shared, widgets
from .display import ago, clock_time, esc

if TYPE_CHECKING:
    from .._engine import Engine
    from .._schedules import Schedule

def _when(ts: datetime | None, now: float) -> str:
    if ts is None:
        return "—"
    t = ts.timestamp()
    return f"{clock_time(t, now)} <span class='nbt-ago'>({ago(t, now)})</span>"


class ScheduleRow(widgets.HBox):  # type: ignore[misc]
    def __init__(self, panel: SchedulesPanel, guard: Guard, sid: str) -> None:
        self.sid = sid
        self.text = make(widgets.HTML, "nbt-schedule-text", width="760px")
        self.toggle = button("Deactivate", "nbt-schedule-toggle", "nbt-fit")
        self.now = button("Trigger now", "nbt-schedule-trigger", "nbt-fit")
        self.delete = button("Delete…", "nbt-schedule-delete", "nbt-fit", button_style="danger")
        self.toggle.on_click(guard(lambda _b: panel.act(sid, "toggle")))
        self.now.on_click(guard(lambda _b: panel.act(sid, "trigger")))
        self.delete.on_click(guard(lambda _b: panel.act(sid, "delete")))
        parts = [self.text] if panel.read_only else [self.text, self.toggle, self.now, self.delete]
        super().__init__(parts, layout=shared(widgets.Layout))
        self.add_class("nbt-schedule")

    def show(self, s: Schedule, now: float) -> None:
        state = ("<span class='nbt-ok'>active</span>" if s.active
                 else "<span class='nbt-warn'>inactive</span>")
        self.text.value = (
            f"<b>{esc(s.task)}</b> {state} · {esc(cron_words(s.cron))} "
            f"<code title='{html.escape(s.cron)}'>{esc(s.cron)}</code> {esc(s.timezone)}"
            f"<br><span class='nbt-fact'>next</span> {_when(s.next_run if s.active else None, now)}"
            f" · <span class='nbt-fact'>last</span> {_when(s.last_timestamp, now)}"
            f" · <span class='nbt-ago'>{esc(s.id)}{' · ' + esc(s.external_id) if s.external_id else ''}"
            "</span>")
        self.toggle.description = "Deactivate" if s.active else "Activate"


class SchedulesPanel(widgets.VBox):  # type: ignore[misc]
    """See the module docstring. `on_triggered(run_id)` shows a run triggered from here."""

    def __init__(self, engine: Engine, guard: Guard, on_triggered: Callable[[str], None], *,
                 read_only: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self._guard = guard
        self._on_triggered = on_triggered
        self._rows: dict[str, ScheduleRow] = {}
        self._doomed: str | None = None
        self.message = make(widgets.HTML, "nbt-schedules-message")
        self.question = make(widgets.HTML)
        self.yes = button("Yes, delete", "nbt-schedule-delete-yes", "nbt-fit",
                          button_style="danger")
        self.no = button("No", "nbt-schedule-delete-no", "nbt-fit")
        self.yes.on_click(guard(lambda _b: self._delete()))
        self.no.on_click(guard(lambda _b: self._keep()))
        self.confirm = make(widgets.HBox, "nbt-hidden", children=[self.question, self.yes,
                                                                   self.no])
        self.empty = make(widgets.HTML, "nbt-empty", value="no schedules yet: "
                          "<code>@nbtasks.schedules.task(id=..., cron=...)</code> makes one")
        self.list = make(widgets.VBox, children=[self.empty])
        super().__init__([self.confirm, self.message, self.list], layout=shared(widgets.Layout))
        self.add_class("nbt-schedules")

    def refresh(self) -> None:
        schedules = self.engine.schedules.list()
        now = self.engine.clock.now()
        for s in schedules:
            row = self._rows.get(s.id)
            if row is None:
                row = self._rows[s.id] = ScheduleRow(self, self._guard, s.id)
            row.show(s, now)
        children = [self._rows[s.id] for s in schedules] or [self.empty]
        if list(self.list.children) != children:
            self.list.children = children

    def act(self, sid: str, what: str) -> None:
        if self.read_only:
            self.message.value = message("this dashboard is read-only")
            return
        api = self.engine.schedules
        if what == "toggle":
            s = api.retrieve(sid)
            (api.deactivate if s.active else api.activate)(sid)
            self.message.value = message(
                f"{'deactivated' if s.active else 'activated'} {esc(sid)}", ok=True)
        elif what == "trigger":
            self._trigger(sid)
        elif what == "delete":
            self._doomed = sid
            self.question.value = f"<b>Delete schedule {esc(sid)}?</b>&nbsp;"
            hide(self.confirm, False)
            return
        self.refresh()

    def _trigger(self, sid: str) -> None:
        from .._schedules import ScheduledPayload
        from .._tasks import Task

        eng = self.engine
        s = eng.schedules.retrieve(sid)
        defn = eng.registry.require(s.task)
        payload = ScheduledPayload(timestamp=datetime.now(UTC), last_timestamp=s.last_timestamp,
                                   timezone=s.timezone, schedule_id=s.id,
                                   external_id=s.external_id,
                                   type="DECLARATIVE" if s.type == "DECLARATIVE" else "IMPERATIVE")
        body = Task(defn, eng.registry).encode(payload.model_dump(mode="json"))
        handle = eng.trigger_encoded(defn, body, {}, is_test=True)
        self.message.value = message(f"triggered <code>{esc(handle.id)}</code>", ok=True)
        self._on_triggered(handle.id)

    def _delete(self) -> None:
        sid, self._doomed = self._doomed, None
        hide(self.confirm)
        if sid is None or self.read_only:
            return
        self.engine.schedules.delete(sid)
        row = self._rows.pop(sid, None)
        self.message.value = message(f"deleted {esc(sid)}", ok=True)
        self.refresh()
        if row is not None:
            row.close()

    def _keep(self) -> None:
        self._doomed = None
        hide(self.confirm)
