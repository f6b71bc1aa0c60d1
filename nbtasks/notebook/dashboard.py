"""`nbtasks.dashboard()`: every run of an engine, live, in one widget.

>>> nbtasks.dashboard()                     # doctest: +SKIP

>>> nbtasks.dashboard(read_only=True, redact=["payload.card"])   # doctest: +SKIP

A summary line (runs per status, runs finished in the last minute) over five tabs:

- **Runs**: the filtered, keyset-paged table with bulk Cancel and Replay; click a run id for its
  detail (payload, output, error and traceback, attempts, logs, live metadata, parent and
  children) with Cancel, Replay, Reschedule and Complete-token buttons.
- **Test**: trigger a test run of any task with an edited JSON payload.
- **Schedules**: each schedule in words, with activate, deactivate, trigger now and delete.
- **Queues**: running and queued counts per queue and key, with pause and resume.
- **Timeline**: recent runs per queue, coloured by status.

`read_only=True` shows everything and allows no action (the buttons are not there, and the
callbacks refuse too, so a crafted widget message can't act); `redact=[...]` masks fields (see
redact.py). Served by Voila, a dashboard is read-only unless the notebook passes
`read_only=False`: a shared page must not let every viewer trigger, cancel or read secrets.

Threads: engine events reach the dashboard through the engine's feed thread (at most a few
updates a second, and none while nothing happens); button and filter callbacks arrive on the
kernel thread. Both take the dashboard's one lock (`Guard`), and neither holds it while the
engine loop waits on them, because the loop never waits on a widget: no corrupted state, no
deadlock. While the page shows the dashboard (its `Probe` says so) the clock ticks once a
second, so "3 s ago" and running durations move; while it is hidden it does no work at all and
catches up when shown again. In a terminal or a script it prints as a one-line text summary.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import queries
from ._ui import Guard, button, hide, make, message, shared, style, widgets
from .bulk import BulkBar
from .detail import RunDetail
from .display import counts_html, esc, under_voila
from .feed import DONE, feed_for
from .probe import Probe
from .queues_panel import QueuesPanel
from .redact import Redactor
from .reload_note import ReloadNoted
from .restart_note import RestartNote
from .runs_table import RunsTable
from .schedules_panel import SchedulesPanel
from .timeline import TimelineView
from .trigger_form import TriggerForm

if TYPE_CHECKING:
    from .._engine import Engine
    from .._events import RunEvent
    from .._tasks import TaskDefinition

RUNS, TEST, SCHEDULES, QUEUES, TIMELINE = range(5)

#: The window of the summary line's runs-per-second figure.
RATE_WINDOW = 60.0

#: Seconds between clock ticks while the dashboard is on screen.
TICK = 1.0


def rate_text(finished: int, window: float = RATE_WINDOW) -> str:
    """"12 finished in the last minute (0.20/s)": the count, then a rate that never rounds a
    real run to zero.

    >>> rate_text(1)
    '1 finished in the last minute (0.017/s)'
    >>> rate_text(0), rate_text(600)
    ('0 finished in the last minute', '600 finished in the last minute (10/s)')
    """
    if not finished:
        return "0 finished in the last minute"
    rate = finished / window
    figure = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
    return f"{finished:,} finished in the last minute ({figure}/s)"


#: Open dashboards, newest last: a status line's run id opens its run in one of them.
OPEN: weakref.WeakValueDictionary[int, Dashboard] = weakref.WeakValueDictionary()


def dashboard_for(engine: Engine) -> Dashboard | None:
    """The newest open dashboard of `engine`, if any."""
    for key in sorted(OPEN, reverse=True):
        d = OPEN.get(key)
        if d is not None and d.engine is engine and not d.closed:
            return d
    return None


class Dashboard(ReloadNoted, widgets.VBox):  # type: ignore[misc]
    """The dashboard widget; see the module docstring. `show_run(run_id)` shows one run."""

    def __init__(self, engine: Engine, *, page_size: int = 20, read_only: bool | None = None,
                 redact: Iterable[str] = ()) -> None:
        self.read_only = under_voila() if read_only is None else bool(read_only)
        self.rules = Redactor(redact)  # bad paths raise here, before any widget exists
        self.engine = engine
        self.run_ids = None  # the feed sends this listener every run's events
        self.closed = False
        self.counts: dict[str, int] = {}
        self.refreshes = 0
        self.ticks = 0
        self.tick = TICK  # seconds between clock ticks while shown
        self.refreshed = threading.Condition()
        self._timeline_stale = False
        self._tasks_stale = False
        self._stale = False  # events arrived while hidden: refresh all when shown again
        self.guard = guard = Guard(self._report)
        self.probe = Probe("nbt-dashboard")
        self.probe.observe(guard(self._on_visible), "visible")
        self.banner = make(widgets.HTML, "nbt-store-banner", "nbt-hidden")
        self.notice = make(widgets.HTML, "nbt-notice")
        self.summary = make(widgets.HTML, "nbt-summary")
        # runs held after a kernel restart: rare, so its text and buttons are made when needed
        self.held = make(widgets.HBox, "nbt-held", "nbt-hidden")
        self.held_text: Any = None
        self.table = RunsTable(engine, guard, guard(self.show_run), page_size,
                               on_pick=lambda: self.bulk.update() if self.bulk else None,
                               pickable=not self.read_only)
        self.bulk: BulkBar | None = None
        if not self.read_only:
            self.bulk = BulkBar(engine, guard, self.table, self._after_bulk)
        # the other parts are built when first needed: opening stays cheap on a big history
        self._detail = Lazy(lambda: RunDetail(engine, guard, guard(self.show_run),
                                              read_only=self.read_only, rules=self.rules,
                                              on_new_run=self.show_new_run))
        self._form = Lazy(self._make_form)
        self._schedules = Lazy(lambda: SchedulesPanel(engine, guard, self.show_new_run,
                                                      read_only=self.read_only))
        self._queues = Lazy(lambda: QueuesPanel(engine, guard, read_only=self.read_only))
        self._timeline = Lazy(lambda: TimelineView(engine, guard))
        runs_tab = [self.bulk, self.table, self._detail] if self.bulk else [self.table,
                                                                            self._detail]
        self.tabs = make(widgets.Tab, "nbt-tabs", children=[
            make(widgets.VBox, children=runs_tab), self._form, self._schedules, self._queues,
            self._timeline], titles=("Runs", "Test", "Schedules", "Queues", "Timeline"))
        self.tabs.observe(guard(self._on_tab), "selected_index")
        mode = [make(widgets.HTML, "nbt-read-only", value=(
            "<span class='nbt-warn'>read-only</span> <span class='nbt-ago'>this dashboard "
            "shows runs and allows no action</span>"))] if self.read_only else []
        super().__init__([style(), self.probe, RestartNote.own(), self.banner, *mode, self.summary,
                          self.held,
                          self.notice, self.tabs], layout=shared(widgets.Layout))
        self.add_class("nbt-dashboard")
        self.add_class("nbt-themed")
        if self.read_only:
            self.add_class("nbt-is-read-only")
        with guard.lock:
            self._feed = feed_for(engine)
            self._feed.add(self)  # before the first read, so no event falls in between
            engine.registry.listen(self._on_define)
            self._refresh(None)
        OPEN[next(_serial)] = self

    @property
    def detail(self) -> RunDetail:
        return self._detail.get()  # type: ignore[no-any-return]

    @property
    def form(self) -> TriggerForm:
        """The Test tab's form (built on first use)."""
        return self._form.get()  # type: ignore[no-any-return]

    @property
    def schedules(self) -> SchedulesPanel:
        return self._schedules.get()  # type: ignore[no-any-return]

    @property
    def queues(self) -> QueuesPanel:
        return self._queues.get()  # type: ignore[no-any-return]

    @property
    def timeline(self) -> TimelineView:
        return self._timeline.get()  # type: ignore[no-any-return]

    def _make_form(self) -> Any:
        if self.read_only:
            return make(widgets.HTML, "nbt-test-disabled", value=(
                "<i>read-only dashboard: test runs can't be triggered here</i>"))
        form = TriggerForm(self.engine, self.guard, self.show_new_run, rules=self.rules)
        form.set_tasks(self.engine.registry.ids())
        return form

    # ------------------------------------------------------------------ feed thread

    def update(self, events: list[RunEvent]) -> float | None:
        """The feed's call: refresh what these events touch, or tick the clock (no events).

        Hidden (the probe says so): note that something changed and do nothing else. Shown:
        refresh, and ask to be called again in a second, so relative times keep moving.
        """
        with self.guard.lock:
            if self.closed:
                return DONE
            visible = self.probe.visible
            if visible is False:
                self._stale = self._stale or bool(events)
                return None
            if self._stale:
                self._stale = False
                again = self._refresh(None)
            elif not events:
                again = self._tick()
            else:
                again = self._refresh(events)
            if visible:
                again = self.tick if again is None else min(again, self.tick)
            return again

    def refresh(self) -> None:
        """Re-read everything now (the feed does this by itself when runs change)."""
        self.engine.runs._fresh()
        with self.guard.lock:
            self._refresh(None)

    def _summary(self, now: float) -> None:
        finished = queries.finished_since(self.engine.store, now - RATE_WINDOW)
        total = sum(self.counts.values())
        self.summary.value = (f"<b>{_runs(total)}</b> &nbsp; {counts_html(self.counts)}"
                              f" &nbsp; {rate_text(finished)}")

    def _tick(self) -> float | None:
        """A second passed and nothing happened: move the clock-dependent parts only."""
        now = self.engine.clock.now()
        self._summary(now)
        if self.tabs.selected_index == RUNS:  # another tab hides the table: leave it be
            # A schedule made or deleted (here, in a cell, or by another kernel on this file)
            # is no run event: read the few schedule rows each tick, so the picker shows it now
            # and not when the next run is created.
            if self.table.set_schedules():
                self.table.refresh(now)
            self.table.retime(now)
            detail = self._detail.part
            if detail is not None and detail.run is not None and not detail.run.is_completed:
                detail.refresh()
        again = self._timeline_due(None)
        self.ticks += 1
        with self.refreshed:
            self.refreshed.notify_all()
        return again

    def _timeline_due(self, events: list[RunEvent] | None) -> float | None:
        if self.tabs.selected_index != TIMELINE:
            return None
        wait = self.timeline.due()
        if wait > 0:
            self._timeline_stale = True
            return wait
        self.timeline.refresh()
        self._timeline_stale = False
        return None

    def _refresh(self, events: list[RunEvent] | None) -> float | None:
        eng = self.engine
        now = eng.clock.now()
        again: float | None = None
        if events is None or events:
            problem = getattr(eng, "store_problem", None)
            self.banner.value = (f'<div class="nbt-banner"><b>store problem:</b> '
                                 f"{esc(problem)}</div>" if problem else "")
            hide(self.banner, not problem)
            self.counts = queries.status_counts(eng.store)
            self._summary(now)
            if events is None or self._tasks_stale or any(e.kind == "created" for e in events):
                self._tasks()
            if self.tabs.selected_index == RUNS:  # else caught up when the tab is shown
                self.table.refresh(now)
                if self.bulk is not None and self.bulk.all.value:
                    self.bulk.update()
                selected = self._detail.part.run_id if self._detail.part is not None else None
                if selected is not None and (events is None or
                                             any(e.run_id == selected for e in events)):
                    self.detail.refresh()
            held = eng.runs.interrupted()
            if held and self.held_text is None:
                self._make_held()
            if self.held_text is not None:
                self.held_text.value = (f"{len(held)} run(s) were interrupted by a kernel "
                                        "restart and are held" + ("" if self.read_only else ":")
                                        if held else "")
            hide(self.held, not held)
        tab = self.tabs.selected_index
        if tab == QUEUES:
            self.queues.refresh()
            self.table.set_queues(sorted(q["name"] for q in eng.queues.list()))
        if tab == SCHEDULES and events is None:
            self.schedules.refresh()
        if events is None or events or self._timeline_stale:
            again = self._timeline_due(events)
        self.refreshes += 1
        with self.refreshed:
            self.refreshed.notify_all()
        return again

    def _make_held(self) -> None:
        self.held_text = make(widgets.HTML)
        if self.read_only:
            self.held.children = [self.held_text]
            return
        resume = button("Resume them", "nbt-resume-held", "nbt-fit", button_style="success")
        cancel = button("Cancel them", "nbt-cancel-held", "nbt-fit", button_style="warning")
        resume.on_click(self.guard(lambda _b: self._held(resume=True)))
        cancel.on_click(self.guard(lambda _b: self._held(resume=False)))
        self.held.children = [self.held_text, resume, cancel]

    def _tasks(self) -> None:
        self._tasks_stale = False
        defined = self.engine.registry.ids()
        if isinstance(self._form.part, TriggerForm):
            self._form.part.set_tasks(defined)
        self.table.set_tasks(sorted({*defined, *queries.task_ids(self.engine.store)}))
        self.table.set_choices(self.engine.clock.now())

    # ------------------------------------------------------------------ kernel thread

    def show_run(self, run_id: str) -> None:
        """Show `run_id` in the detail panel (and the Runs tab), scrolled into view."""
        with self.guard.lock:
            self.notice.value = ""
            self.table.selected = run_id
            self.tabs.selected_index = RUNS
            self.detail.show(run_id, scroll=True)
            self.table.refresh(self.engine.clock.now())

    def show_new_run(self, run_id: str) -> None:
        """A run just made here (Replay, Test, trigger now): page the table to it, highlight
        it, and open it."""
        with self.guard.lock:
            self.tabs.selected_index = RUNS
            self.table.jump_to(run_id, refresh=False)
            self.show_run(run_id)  # refreshes the table

    def _after_bulk(self, newest: str | None) -> None:
        if newest is not None:
            self.show_new_run(newest)
        else:
            self.refresh()

    def _on_tab(self, change: Any) -> None:
        tab = change["new"]
        if tab == TEST:
            self._form.get()
        if tab == TIMELINE:
            self.timeline.drawn_at = float("-inf")  # a newly opened tab draws at once
        self._refresh(None)

    def _on_visible(self, change: Any) -> None:
        """The page reported the dashboard shown or hidden: catch up, and start the tick."""
        if change["new"] and not self.closed:
            self._feed.poke(self)

    def _on_define(self, _defn: TaskDefinition) -> None:
        # Called on whichever thread defines a task, perhaps the engine loop (a task defined in
        # a run), so never wait for the lock here: a holder of the lock may be waiting on that
        # loop. If it is taken, the next refresh picks the new task up.
        if not self.guard.lock.acquire(blocking=False):
            self._tasks_stale = True
            return
        try:
            if not self.closed:
                self._tasks()
        finally:
            self.guard.lock.release()

    def _held(self, resume: bool) -> None:
        if self.read_only:
            return
        runs = self.engine.runs
        n = runs.resume_interrupted() if resume else runs.cancel_interrupted()
        self.notice.value = message(f"{'resumed' if resume else 'canceled'} {n} run(s)", ok=True)
        self.refresh()

    def _report(self, text: str) -> None:
        self.notice.value = message(text)

    def wait_refreshed(self, after: int, timeout: float) -> bool:
        """Block until more than `after` refreshes happened (tests sequence on this, not sleeps)."""
        with self.refreshed:
            return self.refreshed.wait_for(lambda: self.refreshes > after, timeout)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop listening and close every part (the feed thread stops with its last listener)."""
        guard = getattr(self, "guard", None)
        if guard is None or not hasattr(self, "_feed"):  # __init__ failed early (ipywidgets
            # calls close() from __del__)
            widgets.VBox.close(self)
            return
        with guard.lock:
            if self.closed:
                return
            self.closed = True
        self._feed.remove(self)
        self.engine.registry.unlisten(self._on_define)
        _close_tree(self)

    def __repr__(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{n:,} {s}" for s, n in sorted(self.counts.items(),
                                                         key=lambda kv: -kv[1]))
        return f"<nbtasks dashboard: {_runs(total)} ({parts or 'none yet'})>"


class Lazy(widgets.VBox):  # type: ignore[misc]
    """A slot whose content is built by `build()` the first time `get()` is called."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self.part: Any = None
        super().__init__([], layout=shared(widgets.Layout))

    def get(self) -> Any:
        if self.part is None:
            self.part = self._build()
            self.children = [self.part]
        return self.part


_serial = itertools.count()


def _runs(n: int) -> str:
    return f"{n:,} run" if n == 1 else f"{n:,} runs"


def _close_tree(widget: Any) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widgets.Widget.close(widget)
