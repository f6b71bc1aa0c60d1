"""The runs table: filters, one widget for the page's rows, and a keyset pager over the store.

The rows are one anywidget (rows_view.py) holding the page as data; the page draws
`page_size` rows once and refills them in place, so a refresh never rebuilds the table, and
opening a dashboard makes one widget model for the rows, not five a row. A blank row keeps its
height, so a filter that leaves one run does not collapse the widget and make the notebook
jump. Each page is
one indexed query anchored at a run (see queries.py): a page deep in the history stays put while
new runs arrive, and `jump_to(run_id)` puts a run on screen and highlights it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import datetime, time
from typing import TYPE_CHECKING, Any

from .._durations import parse_duration
from .._errors import ConfigurationError
from .._models import MACHINES
from .._status import RunStatus
from . import queries
from ._ui import Guard, button, classed, hide, make, message, shared, widgets
from .display import ago, clock_time, duration, esc
from .rows_view import RowsView

if TYPE_CHECKING:
    from .._engine import Engine

ALL = ""

#: The time-range filter: (label, seconds back from now; 0 for all time; CUSTOM for the from/to
#: boxes). A Dropdown shows a blank box for a None value, so "any" is 0 (and "" below), never
#: None.
CUSTOM = -1.0
RANGES = (("any time", 0.0), ("last 5 min", 300.0), ("last hour", 3600.0),
          ("last day", 86400.0), ("last 7 days", 7 * 86400.0), ("custom…", CUSTOM))
TESTS = (("test or not", ""), ("test runs", "test"), ("not test runs", "not-test"))
#: The sort picker: "key:asc" or "key:desc" (see queries.SORTS).
SORT_OPTIONS = tuple((labels[up], f"{key}:{'asc' if up else 'desc'}")
                     for key, labels in queries.SORTS.items() for up in (0, 1))
_HINT = "filters apply as you type"
_WHEN_HELP = "use 2026-01-31 14:30, 14:30 (today) or 2h (ago)"


def parse_when(text: str, now: float, where: str) -> float | None:
    """A custom range bound typed by a person: a local date and time ("2026-01-31 14:30", an
    ISO string with an offset is taken as such), a time today ("14:30"), or how long ago
    ("2h", "1d12h", "90m ago"). Empty: no bound. Anything else: ConfigurationError naming the
    box and the accepted forms.
    """
    text = text.strip()
    if not text:
        return None
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text):
            today = datetime.fromtimestamp(now).astimezone().date()
            return datetime.combine(today, time.fromisoformat(text.zfill(5))).astimezone() \
                .timestamp()
        if text[:1].isdigit() and re.match(r"\d{4}-", text):
            when = datetime.fromisoformat(text)
            return (when if when.tzinfo else when.astimezone()).timestamp()
        return now - parse_duration(re.sub(r"\s*ago$", "", text), where=where)
    except (ValueError, ConfigurationError):
        raise ConfigurationError(f"{where}: cannot read {text!r}; {_WHEN_HELP}") from None

#: Seconds of quiet typing before a text filter applies.
DEBOUNCE = 0.3


class RunsTable(widgets.VBox):  # type: ignore[misc]
    """Filters, `page_size` rows, and first/newer/older/last keyset paging."""

    def __init__(self, engine: Engine, guard: Guard, on_open: Callable[[str], None],
                 page_size: int = 20, on_pick: Callable[[], None] | None = None,
                 pickable: bool = True) -> None:
        """`on_pick` is told when rows are picked for a bulk action; a read-only table has no
        pick boxes (`pickable=False`)."""
        self.engine = engine
        self.page_size = page_size
        self.anchor: queries.Cursor | None = None  # the first row shown; None: the newest
        self.position = 0  # rows before the first one shown
        self.total = 0
        self.selected: str | None = None
        self.picked: set[str] = set()
        self.rows_shown: list[queries.RunRow] = []
        self._flash: str | None = None
        self._quiet = False
        self._guard = guard
        self._timer: threading.Timer | None = None
        self._on_pick = on_pick or (lambda: None)
        w = "150px"
        self.task = make(widgets.Dropdown, "nbt-filter-task", width=w,
                         options=[("all tasks", ALL)], value=ALL)
        self.status = make(widgets.Dropdown, "nbt-filter-status", width=w,
                           options=[("all statuses", ALL), ("active (not final)", queries.ACTIVE)]
                           + [(s.value, s.value) for s in RunStatus], value=ALL)
        self.range = make(widgets.Dropdown, "nbt-filter-range", width="120px", options=RANGES,
                          value=0.0)
        self.queue = make(widgets.Dropdown, "nbt-filter-queue", width=w,
                          options=[("all queues", ALL)], value=ALL)
        self.machine = make(widgets.Dropdown, "nbt-filter-machine", width="130px",
                            options=[("all machines", ALL), ("kernel", "kernel"),
                                     *((m, m) for m in MACHINES)], value=ALL)
        self.test = make(widgets.Dropdown, "nbt-filter-test", width="120px", options=TESTS,
                         value="")
        self.schedule = make(widgets.Dropdown, "nbt-filter-schedule", width="190px",
                             options=[("all schedules", ALL)], value=ALL)
        self.batch = make(widgets.Dropdown, "nbt-filter-batch", width="230px",
                          options=[("all batches", ALL)], value=ALL)
        self.sort = make(widgets.Dropdown, "nbt-filter-sort", width="180px",
                         options=SORT_OPTIONS, value="created:desc")
        self.since_at = make(widgets.Text, "nbt-filter-from", "nbt-hidden", width="150px",
                             placeholder="from (2h, 14:30…)", continuous_update=True)
        self.until_at = make(widgets.Text, "nbt-filter-to", "nbt-hidden", width="150px",
                             placeholder="to (empty: now)", continuous_update=True)
        self._when_problem = ""
        self.tag = make(widgets.Text, "nbt-filter-tag", width="160px",
                        placeholder="tags: a, b", continuous_update=True)
        self.all_tags = make(widgets.Dropdown, "nbt-filter-all-tags", width="70px",
                             options=[("any", False), ("all", True)], value=False)
        self.search = make(widgets.Text, "nbt-filter-search", width="230px",
                           placeholder="search ids (run, batch, parent, key)",
                           continuous_update=True)
        for picker in (self.task, self.status, self.range, self.queue, self.machine, self.test,
                       self.all_tags, self.schedule, self.batch, self.sort):
            picker.observe(guard(self._on_filter), "value")
        for text in (self.tag, self.search, self.since_at, self.until_at):
            text.observe(self._on_typing, "value")
        self.hint = make(widgets.HTML, "nbt-filter-hint",
                         value=f'<span class="nbt-ago">{_HINT}</span>')
        self._on_open = on_open
        self._flashing: tuple[str, int] | None = None  # (run id, n): replayed when n changes
        self._flashes = 0
        self.rows_view = RowsView(page_size, pickable)  # one widget for all rows: cheap to open
        self.rows_view.on_click(guard(self._on_row_click))
        self.empty = make(widgets.HTML, "nbt-empty", "nbt-hidden", value="no runs match")
        self.clear = button("clear filters", "nbt-clear-filters", "nbt-fit", "nbt-hidden")
        self.clear.on_click(guard(lambda _b: self.clear_filters()))
        self.first = button("« first", "nbt-page-first", "nbt-fit")
        self.newer = button("◀ newer", "nbt-page-newer", "nbt-fit")
        self.older = button("older ▶", "nbt-page-older", "nbt-fit")
        self.last = button("last »", "nbt-page-last", "nbt-fit")
        self.where = make(widgets.HTML, "nbt-page-position")
        self.first.on_click(guard(lambda _b: self.go("first")))
        self.newer.on_click(guard(lambda _b: self.go("newer")))
        self.older.on_click(guard(lambda _b: self.go("older")))
        self.last.on_click(guard(lambda _b: self.go("last")))
        box = shared(widgets.Layout)
        super().__init__([
            classed(widgets.HBox([self.task, self.status, self.range, self.since_at,
                                  self.until_at, self.queue, self.machine, self.test],
                                 layout=box), "nbt-filters"),
            classed(widgets.HBox([self.schedule, self.batch, self.tag, self.all_tags,
                                  self.search, self.sort], layout=box), "nbt-filters"),
            self.hint,
            widgets.HBox([self.empty, self.clear], layout=box),
            classed(widgets.Box([self.rows_view], layout=box), "nbt-scroll"),
            widgets.HBox([self.first, self.newer, self.where, self.older, self.last], layout=box),
        ], layout=box)
        self.add_class("nbt-table")

    # ------------------------------------------------------------------ reading

    def query(self) -> queries.RunQuery:
        tags = tuple(t.strip() for t in self.tag.value.split(",") if t.strip())
        since_at, until_at = self._custom_range()
        return queries.RunQuery(
            task_id=self.task.value or None, status=self.status.value or None,
            search=self.search.value, tags=tags, all_tags=bool(self.all_tags.value),
            since=self.range.value if self.range.value > 0 else None,
            queue=self.queue.value or None, machine=self.machine.value or None,
            test={"test": True, "not-test": False}.get(self.test.value),
            batch_id=self.batch.value or None, schedule_id=self.schedule.value or None,
            since_at=since_at, until_at=until_at)

    def order(self) -> queries.Order:
        key, way = str(self.sort.value).split(":")
        return queries.Order(key, ascending=way == "asc")

    def _custom_range(self) -> tuple[float | None, float | None]:
        """The from/to boxes when the range is "custom…". A bound that cannot be read is left
        out (the rest of the filters still apply) and the hint says what was wrong."""
        self._when_problem = ""
        if self.range.value != CUSTOM:
            return None, None
        now = self.engine.clock.now()
        bounds: list[float | None] = []
        for box, where in ((self.since_at, "from"), (self.until_at, "to")):
            try:
                bounds.append(parse_when(box.value, now, where))
            except ConfigurationError as exc:
                self._when_problem = str(exc)
                bounds.append(None)
        return bounds[0], bounds[1]

    def refresh(self, now: float, rows: list[queries.RunRow] | None = None) -> None:
        """Re-read the current page and the total; the caller holds the dashboard's lock.

        `rows`: the page at `anchor`, already read by the caller (paging reads it anyway; a
        sort without an index pays a scan per query, so none is read twice)."""
        if self.engine.closed:  # a typing pause or a tick that fires after the engine closed
            return
        store = self.engine.store
        q, order = self.query(), self.order()
        custom = self.range.value == CUSTOM
        hide(self.since_at, not custom)
        hide(self.until_at, not custom)
        self.hint.value = (message(esc(self._when_problem)) if self._when_problem
                           else f'<span class="nbt-ago">{_HINT}</span>')
        total = queries.count(store, q, now)
        if rows is None:
            rows = queries.page(store, q, now, limit=self.page_size, at=self.anchor,
                                order=order)
        if not rows and self.anchor is not None:  # the anchor run and all after it are gone
            self.anchor = None
            rows = queries.page(store, q, now, limit=self.page_size, order=order)
        self._show(rows, now)
        # Count the anchor's position from the nearer end (the previous position says which):
        # a count walks the index from an end to the anchor, a page's worth near either end.
        near_end = self.position * 2 > total
        self.position = (queries.newer_than(store, q, now, self.anchor, order,
                                            total=total if near_end else None)
                         if self.anchor is not None and rows else 0)
        if self.position == 0:
            self.anchor = None  # the first page follows new runs as they arrive
        first = self.position + 1 if rows else 0
        self.where.value = (f"&nbsp;{first:,}&ndash;{self.position + len(rows):,} of "
                            f"{total:,}&nbsp;")
        at_top = self.position == 0
        at_end = self.position + len(rows) >= total
        self.first.disabled = self.newer.disabled = at_top
        self.older.disabled = self.last.disabled = at_end
        hide(self.empty, bool(rows))
        hide(self.clear, bool(rows) or (q.is_empty and not custom))
        # Last: whoever sees the new total (a test, a tick on another thread) sees its page.
        self.total = total

    def _show(self, rows: list[queries.RunRow], now: float) -> None:
        self.rows_shown = rows
        flash, self._flash = self._flash, None
        if flash is not None:  # flashes once, on this refresh; a later jump replays it
            self._flashes += 1
            self._flashing = (flash, self._flashes)
        else:
            self._flashing = None
        self.rows_view.rows = [self._cells(row, now) for row in rows]

    def retime(self, now: float) -> None:
        """The clock moved and nothing else: redraw the shown rows' times, with no query."""
        self.rows_view.rows = [self._cells(row, now) for row in self.rows_shown]

    def _cells(self, row: queries.RunRow, now: float) -> dict[str, Any]:
        """One row as the page draws it: display strings, not HTML (rows.js sets text)."""
        if row.status == "DELAYED" and row.delay_until is not None:
            took = f"starts {ago(row.delay_until, now)}"
        else:
            took = duration(row.duration(now))
        flash = self._flashing[1] if self._flashing and self._flashing[0] == row.id else 0
        return {"id": row.id, "status": row.status, "test": bool(row.is_test),
                "task": row.task_id, "created": clock_time(row.created_at, now),
                "ago": ago(row.created_at, now), "waited": duration(row.waited(now)),
                "took": took, "att": str(row.attempt_count), "machine": row.machine or "",
                "queue": row.queue or "", "tags": ", ".join(row.tags),
                "selected": row.id == self.selected, "flash": flash,
                "picked": row.id in self.picked}

    def set_tasks(self, task_ids: list[str]) -> None:
        """Offer these task ids in the task filter, keeping the current choice."""
        self._set_options(self.task, [("all tasks", ALL), *((t, t) for t in task_ids)])

    def set_queues(self, names: list[str]) -> None:
        self._set_options(self.queue, [("all queues", ALL), *((n, n) for n in names)])

    def set_choices(self, now: float) -> None:
        """Re-read the queues, schedules and recent batches offered in their filters (when runs
        were created: a queue, a batch or a scheduled run is new). A chosen batch that is no longer
        recent stays offered, so the filter the user set is not dropped under them."""
        store = self.engine.store
        # the queue picker is filled here too, not only when the Queues tab is opened: a
        # queue made by a trigger is a choice as soon as its first run exists
        self.set_queues(sorted(q["name"] for q in self.engine.queues.list()))
        self.set_schedules()
        batches = [("all batches", ALL), *((f"{bid} · {clock_time(t, now)}", bid) for bid, t in
                                          queries.recent_batches(store))]
        chosen = self.batch.value
        if chosen and chosen not in {v for _, v in batches}:
            batches.append((chosen, chosen))
        self._set_options(self.batch, batches)

    def set_schedules(self) -> bool:
        """Re-read the schedules offered in their filter (a few rows: the schedules table).

        Returns True when the chosen schedule was deleted, so the filter fell back to "all
        schedules" and the rows shown no longer match it."""
        chosen = self.schedule.value
        self._set_options(self.schedule, [("all schedules", ALL), *(
            (f"{task} · {cron} · {sid}", sid) for sid, task, cron in
            queries.schedule_choices(self.engine.store))])
        return bool(chosen) and self.schedule.value != chosen

    def _set_options(self, picker: Any, options: list[tuple[str, str]]) -> None:
        if list(picker.options) == options:
            return
        self._quiet = True
        try:
            current = picker.value
            picker.options = options
            picker.value = current if current in {v for _, v in options} else ALL
        finally:
            self._quiet = False

    # ------------------------------------------------------------------ moving

    def go(self, where: str) -> None:
        """Page to "first", "newer", "older" or "last"."""
        store, q, now = self.engine.store, self.query(), self.engine.clock.now()
        order, size = self.order(), self.page_size
        shown = self.rows_shown
        rows: list[queries.RunRow] | None = None
        if where == "first" or (where == "newer" and not shown):
            self.anchor = None
        elif where == "older" and shown:
            rows = queries.page(store, q, now, limit=size, after=queries.Cursor.of(shown[-1]),
                                order=order) or None
        elif where == "newer":
            rows = queries.page(store, q, now, limit=size, before=queries.Cursor.of(shown[0]),
                                order=order)
            if len(rows) < size:  # fewer than a page above: that is the first page
                self.anchor, rows = None, None
        elif where == "last":
            rows = queries.page(store, q, now, limit=size, last=True, order=order) or None
            self.position = self.total  # near the end: count the position from there
        if rows:
            self.anchor = queries.Cursor.of(rows[0])
        self.refresh(now, rows)

    def jump_to(self, run_id: str, refresh: bool = True) -> None:
        """Show `run_id` (clearing filters it does not pass), select it and flash its row.

        The flash lasts one refresh; a caller about to refresh anyway passes `refresh=False`.
        """
        store, now = self.engine.store, self.engine.clock.now()
        self.engine.runs._fresh()
        target = queries.row(store, run_id, self.order())
        if target is None:
            return
        if not queries.matches(store, self.query(), now, run_id):
            self._reset_filters()
        self.selected = self._flash = run_id
        if not any(r.id == run_id for r in self.rows_shown):
            cursor = queries.Cursor.of(target)
            self.anchor = (None if queries.newer_than(store, self.query(), now, cursor,
                                                      self.order())
                           < self.page_size else cursor)
        if refresh:
            self.refresh(now)

    def clear_filters(self) -> None:
        self._reset_filters()
        self.anchor = None
        self.refresh(self.engine.clock.now())

    def _reset_filters(self) -> None:
        self._quiet = True
        try:
            for picker, value in ((self.task, ALL), (self.status, ALL), (self.range, 0.0),
                                  (self.queue, ALL), (self.machine, ALL), (self.test, ""),
                                  (self.all_tags, False), (self.tag, ""), (self.search, ""),
                                  (self.schedule, ALL), (self.batch, ALL),
                                  (self.since_at, ""), (self.until_at, "")):
                picker.value = value
        finally:
            self._quiet = False

    # ------------------------------------------------------------------ callbacks

    def _on_filter(self, _change: Any = None) -> None:
        if self._quiet:
            return
        self.anchor = None
        self.refresh(self.engine.clock.now())

    def _on_typing(self, _change: Any) -> None:
        """Kernel thread, per keystroke: apply the filter once typing pauses for DEBOUNCE s."""
        if self._quiet:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(DEBOUNCE, self._guard(self._on_filter))
        self._timer.daemon = True
        self._timer.start()

    def apply_typing_now(self) -> None:
        """Apply a pending typed filter at once (code that sets `.value` and reads the rows)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self._guard(self._on_filter)()

    def _on_row_click(self, click: dict[str, Any]) -> None:
        """A run id or a pick box was clicked in the page (rows.js)."""
        run_id = click.get("run")
        if not isinstance(run_id, str) or not any(r.id == run_id for r in self.rows_shown):
            return  # only a run on the page can be opened or picked from it
        if click.get("kind") == "open":
            self._on_open(run_id)
        elif click.get("kind") == "pick":
            (self.picked.add if click.get("value") else self.picked.discard)(run_id)
            self.retime(self.engine.clock.now())  # echo the pick: the page holds it till then
            self._on_pick()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().close()
