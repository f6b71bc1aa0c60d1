"""The runs table: filters, a fixed pool of row widgets, and a pager over the store.

Rows are created once (`page_size` of them) and refilled in place, so a refresh sends only the
cells that changed and the browser never rebuilds the table. Each page is one indexed query
(see queries.py), which is what keeps a 100,000-run history as quick as a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._status import RunStatus
from . import queries
from ._ui import Guard, button, hide, make, shared, widgets
from .display import badge, clock_time, duration, esc

if TYPE_CHECKING:
    from .._engine import Engine

_COLUMNS = (("id", "run"), ("task", "task"), ("created", "created"), ("dur", "duration"),
            ("att", "att."), ("machine", "machine"), ("queue", "queue"), ("tags", "tags"))

ALL = ""


class RowView(widgets.HBox):  # type: ignore[misc]
    """One table row: status badge, the run id as a button that opens it, then the other cells."""

    def __init__(self, on_open: Callable[[str], None]) -> None:
        self.run_id: str | None = None
        self._status = make(widgets.HTML, "nbt-c-status")
        self._open = button("", "nbt-link", "nbt-run-link", width="220px")
        self._cells = make(widgets.HTML)
        self._open.on_click(lambda _b: self.run_id and on_open(self.run_id))
        super().__init__([self._status, self._open, self._cells],
                         layout=shared(widgets.Layout))
        self.add_class("nbt-row")
        self._last_status = ""
        self._selected = False

    def show(self, row: queries.RunRow, now: float, selected: bool) -> None:
        self.run_id = row.id
        if row.status != self._last_status:
            if self._last_status:
                self.remove_class(f"nbt-row-{self._last_status}")
            self.add_class(f"nbt-row-{row.status}")
            self._last_status = row.status
        self._status.value = badge(row.status) + (" <i>test</i>" if row.is_test else "")
        self._open.description = row.id
        self._open.tooltip = f"open {row.id}"
        cells = (esc(row.task_id), clock_time(row.created_at, now),
                 duration(row.duration(now)), str(row.attempt_count), esc(row.machine),
                 esc(row.queue), esc(", ".join(row.tags)))
        self._cells.value = '<div class="nbt-cells">' + "".join(
            f'<span class="nbt-c-{key}" title="{text}">{text}</span>'
            for (key, _), text in zip(_COLUMNS[1:], cells, strict=True)) + "</div>"
        if selected != self._selected:
            (self.add_class if selected else self.remove_class)("nbt-selected")
            self._selected = selected
        hide(self, False)

    def blank(self) -> None:
        self.run_id = None
        hide(self)


class RunsTable(widgets.VBox):  # type: ignore[misc]
    """Filters (task, status, tag, id search), `page_size` rows, and newer/older paging."""

    def __init__(self, engine: Engine, guard: Guard, on_open: Callable[[str], None],
                 page_size: int = 20) -> None:
        self.engine = engine
        self.page_size = page_size
        self.offset = 0
        self.total = 0
        self.selected: str | None = None
        self.rows_shown: list[queries.RunRow] = []
        self._quiet = False
        self.task = make(widgets.Dropdown, "nbt-filter-task", width="180px",
                         options=[("all tasks", ALL)], value=ALL)
        self.status = make(widgets.Dropdown, "nbt-filter-status", width="180px",
                           options=[("all statuses", ALL), ("active (not final)", queries.ACTIVE)]
                           + [(s.value, s.value) for s in RunStatus], value=ALL)
        self.tag = make(widgets.Text, "nbt-filter-tag", width="140px", placeholder="tag",
                        continuous_update=False)
        self.search = make(widgets.Text, "nbt-filter-search", width="260px",
                           placeholder="search ids (run, batch, parent)", continuous_update=False)
        for w in (self.task, self.status, self.tag, self.search):
            w.observe(guard(self._on_filter), "value")
        head = "".join(f'<span class="nbt-c-{k}">{t}</span>' for k, t in
                       (("status", "status"), *_COLUMNS))
        self.rows = [RowView(guard(on_open)) for _ in range(page_size)]
        self.newer = button("◀ newer", "nbt-page-newer", width="90px")
        self.older = button("older ▶", "nbt-page-older", width="90px")
        self.position = make(widgets.HTML, "nbt-page-position")
        self.newer.on_click(guard(lambda _b: self._page(-1)))
        self.older.on_click(guard(lambda _b: self._page(+1)))
        box = shared(widgets.Layout)
        super().__init__([
            widgets.HBox([self.task, self.status, self.tag, self.search], layout=box),
            make(widgets.HTML, value=f'<div class="nbt-head">{head}</div>'),
            *self.rows,
            widgets.HBox([self.newer, self.position, self.older], layout=box),
        ], layout=box)
        self.add_class("nbt-runs")

    # ------------------------------------------------------------------ reading

    def query(self) -> queries.RunQuery:
        return queries.RunQuery(task_id=self.task.value or None, status=self.status.value or None,
                                tag=self.tag.value.strip() or None, search=self.search.value)

    def refresh(self, now: float) -> None:
        """Re-read the current page and the total; the caller holds the dashboard's lock."""
        store = self.engine.store
        q = self.query()
        self.total = queries.count(store, q, now)
        if self.offset >= self.total and self.offset:
            self.offset = max(0, (self.total - 1) // self.page_size * self.page_size)
        self.rows_shown = queries.page(store, q, now, limit=self.page_size, offset=self.offset)
        for view, row in zip(self.rows, self.rows_shown, strict=False):
            view.show(row, now, row.id == self.selected)
        for view in self.rows[len(self.rows_shown):]:
            view.blank()
        first = self.offset + 1 if self.rows_shown else 0
        self.position.value = (f"&nbsp;{first:,}&ndash;{self.offset + len(self.rows_shown):,} of "
                               f"{self.total:,}&nbsp;")
        self.newer.disabled = self.offset == 0
        self.older.disabled = self.offset + self.page_size >= self.total

    def set_tasks(self, task_ids: list[str]) -> None:
        """Offer these task ids in the task filter, keeping the current choice."""
        options = [("all tasks", ALL), *((t, t) for t in task_ids)]
        if list(self.task.options) == options:
            return
        self._quiet = True
        try:
            current = self.task.value
            self.task.options = options
            self.task.value = current if current in task_ids else ALL
        finally:
            self._quiet = False

    # ------------------------------------------------------------------ callbacks

    def _on_filter(self, _change: Any) -> None:
        if self._quiet:
            return
        self.offset = 0
        self.refresh(self.engine.clock.now())

    def _page(self, step: int) -> None:
        self.offset = max(0, self.offset + step * self.page_size)
        self.refresh(self.engine.clock.now())
