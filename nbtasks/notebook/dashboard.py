"""`nbtasks.dashboard()`: every run of an engine, live, in one widget.

>>> nbtasks.dashboard()                     # doctest: +SKIP

A summary line (runs per status, runs per second) over four tabs:

- **Runs**: the filtered, paged table; click a run id for its detail (payload, output, error
  and traceback, attempts, logs, live metadata, parent and children) with Cancel, Replay and
  Complete-token buttons.
- **Test**: trigger a test run of any task with an edited JSON payload.
- **Queues**: running and queued counts per queue and key, with pause and resume.
- **Timeline**: recent runs per queue, coloured by status.

Threads: engine events reach the dashboard through the engine's feed thread (at most a few
updates a second, and none while nothing happens); button and filter callbacks arrive on the
kernel thread. Both take the dashboard's one lock (`Guard`), and neither holds it while the
engine loop waits on them, because the loop never waits on a widget: no corrupted state, no
deadlock. In a terminal or a script the dashboard prints as a one-line text summary.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import queries
from ._ui import Guard, button, hide, make, message, shared, style, widgets
from .detail import RunDetail
from .display import counts_html
from .feed import DONE, feed_for
from .queues_panel import QueuesPanel
from .runs_table import RunsTable
from .timeline import TimelineView
from .trigger_form import TriggerForm

if TYPE_CHECKING:
    from .._engine import Engine
    from .._events import RunEvent
    from .._tasks import TaskDefinition

RUNS, TEST, QUEUES, TIMELINE = range(4)

#: The window of the summary line's runs-per-second figure.
RATE_WINDOW = 60.0


class Dashboard(widgets.VBox):  # type: ignore[misc]
    """The dashboard widget; see the module docstring. `show_run(run_id)` shows one run."""

    def __init__(self, engine: Engine, *, page_size: int = 20) -> None:
        self.engine = engine
        self.run_ids = None  # the feed sends this listener every run's events
        self.closed = False
        self.counts: dict[str, int] = {}
        self.refreshes = 0
        self.refreshed = threading.Condition()
        self._timeline_stale = False
        self._tasks_stale = False
        self.guard = guard = Guard(self._report)
        self.notice = make(widgets.HTML, "nbt-notice")
        self.summary = make(widgets.HTML, "nbt-summary")
        self.held_text = make(widgets.HTML)
        resume = button("Resume them", "nbt-resume-held", button_style="success")
        cancel = button("Cancel them", "nbt-cancel-held", button_style="warning")
        resume.on_click(guard(lambda _b: self._held(resume=True)))
        cancel.on_click(guard(lambda _b: self._held(resume=False)))
        self.held = make(widgets.HBox, "nbt-held", "nbt-hidden",
                         children=[self.held_text, resume, cancel])
        self.table = RunsTable(engine, guard, guard(self.show_run), page_size)
        # the other parts are built when first needed: opening stays cheap on a big history
        self._detail = Lazy(lambda: RunDetail(engine, guard, guard(self.show_run)))
        self._form = Lazy(self._make_form)
        self._queues = Lazy(lambda: QueuesPanel(engine, guard))
        self._timeline = Lazy(lambda: TimelineView(engine, guard))
        self.tabs = make(widgets.Tab, "nbt-tabs", children=[
            make(widgets.VBox, children=[self.table, self._detail]), self._form, self._queues,
            self._timeline], titles=("Runs", "Test", "Queues", "Timeline"))
        self.tabs.observe(guard(self._on_tab), "selected_index")
        super().__init__([style(), self.summary, self.held, self.notice, self.tabs],
                         layout=shared(widgets.Layout))
        self.add_class("nbt-dashboard")
        with guard.lock:
            self._feed = feed_for(engine)
            self._feed.add(self)  # before the first read, so no event falls in between
            engine.registry.listen(self._on_define)
            self._refresh(None)

    @property
    def detail(self) -> RunDetail:
        return self._detail.get()  # type: ignore[no-any-return]

    @property
    def form(self) -> TriggerForm:
        """The Test tab's form (built on first use)."""
        return self._form.get()  # type: ignore[no-any-return]

    @property
    def queues(self) -> QueuesPanel:
        return self._queues.get()  # type: ignore[no-any-return]

    @property
    def timeline(self) -> TimelineView:
        return self._timeline.get()  # type: ignore[no-any-return]

    def _make_form(self) -> TriggerForm:
        form = TriggerForm(self.engine, self.guard, self.show_run)
        form.set_tasks(self.engine.registry.ids())
        return form

    # ------------------------------------------------------------------ feed thread

    def update(self, events: list[RunEvent]) -> float | None:
        """The feed's call: refresh what these events touch; may ask for a timeline redraw."""
        with self.guard.lock:
            if self.closed:
                return DONE
            return self._refresh(events)

    def refresh(self) -> None:
        """Re-read everything now (the feed does this by itself when runs change)."""
        self.engine.runs._fresh()
        with self.guard.lock:
            self._refresh(None)

    def _refresh(self, events: list[RunEvent] | None) -> float | None:
        eng = self.engine
        now = eng.clock.now()
        if events is None or events:
            self.counts = queries.status_counts(eng.store)
            rate = queries.finished_since(eng.store, now - RATE_WINDOW) / RATE_WINDOW
            total = sum(self.counts.values())
            self.summary.value = (f"<b>{_runs(total)}</b> &nbsp; {counts_html(self.counts)}"
                                  f" &nbsp; <b>{rate:.1f}</b> runs/s (last minute)")
            if events is None or self._tasks_stale or any(e.kind == "created" for e in events):
                self._tasks()
            self.table.refresh(now)
            selected = self._detail.part.run_id if self._detail.part is not None else None
            if selected is not None and (events is None or
                                         any(e.run_id == selected for e in events)):
                self.detail.refresh()
            held = eng.runs.interrupted()
            self.held_text.value = (f"{len(held)} run(s) were interrupted by a kernel restart "
                                    "and are held:" if held else "")
            hide(self.held, not held)
        tab = self.tabs.selected_index
        if tab == QUEUES:
            self.queues.refresh()
        if tab == TIMELINE and (events is None or events or self._timeline_stale):
            wait = self.timeline.due()
            if wait > 0:
                self._timeline_stale = True
                return wait
            self.timeline.refresh()
            self._timeline_stale = False
        self.refreshes += 1
        with self.refreshed:
            self.refreshed.notify_all()
        return None

    def _tasks(self) -> None:
        self._tasks_stale = False
        defined = self.engine.registry.ids()
        if self._form.part is not None:
            self._form.part.set_tasks(defined)
        self.table.set_tasks(sorted({*defined, *queries.task_ids(self.engine.store)}))

    # ------------------------------------------------------------------ kernel thread

    def show_run(self, run_id: str) -> None:
        """Show `run_id` in the detail panel (and the Runs tab)."""
        with self.guard.lock:
            self.notice.value = ""
            self.table.selected = run_id
            self.detail.show(run_id)
            self.table.refresh(self.engine.clock.now())
            self.tabs.selected_index = RUNS

    def _on_tab(self, change: Any) -> None:
        tab = change["new"]
        if tab == TEST:
            self._form.get()
        if tab == TIMELINE:
            self.timeline.drawn_at = float("-inf")  # a newly opened tab draws at once
        self._refresh(None)

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
        runs = self.engine.runs
        n = runs.resume_interrupted() if resume else runs.cancel_interrupted()
        self.notice.value = message(f"{'resumed' if resume else 'cancelled'} {n} run(s)", ok=True)
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
        if guard is None:  # __init__ failed early (ipywidgets calls close() from __del__)
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


def _runs(n: int) -> str:
    return f"{n:,} run" if n == 1 else f"{n:,} runs"


def _close_tree(widget: Any) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widgets.Widget.close(widget)
