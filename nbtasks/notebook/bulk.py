"""Bulk actions on the runs table: Cancel or Replay the picked rows, or every run the filters
match, with a progress line, and a confirmation first when more than `CONFIRM_OVER` runs would
be affected (a stray click must not cancel a night's work).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import NbtasksError
from . import queries
from ._ui import Guard, button, hide, make, message, shared, widgets

if TYPE_CHECKING:
    from .._engine import Engine
    from .runs_table import RunsTable

CONFIRM_OVER = 10

#: "All that match" acts on at most this many runs at once (newest first).
MAX_RUNS = 10_000


def matching_ids(engine: Engine, query: queries.RunQuery, limit: int = MAX_RUNS) -> list[str]:
    """Ids of the runs `query` matches, newest first, at most `limit`."""
    now = engine.clock.now()
    where, params = query.where(now)
    _, rows = engine.store.select(
        f"SELECT id FROM runs{where} ORDER BY created_at DESC, id DESC LIMIT ?",
        (*params, limit))
    return [r[0] for r in rows]


class BulkBar(widgets.VBox):  # type: ignore[misc]
    """The bar above the table (see the module docstring)."""

    def __init__(self, engine: Engine, guard: Guard, table: RunsTable,
                 after: Callable[[str | None], None]) -> None:
        self.engine = engine
        self.table = table
        self._after = after
        self._pending: tuple[str, list[str]] | None = None
        self.all = make(widgets.Checkbox, "nbt-bulk-all", width="auto", indent=False,
                        description="all that match the filters", value=False)
        self.count = make(widgets.HTML, "nbt-bulk-count")
        self.cancel = button("Cancel selected", "nbt-bulk-cancel", "nbt-fit",
                             button_style="warning")
        self.replay = button("Replay selected", "nbt-bulk-replay", "nbt-fit")
        self.question = make(widgets.HTML, "nbt-bulk-question")
        self.yes = button("Yes", "nbt-bulk-yes", "nbt-fit", button_style="danger")
        self.no = button("No", "nbt-bulk-no", "nbt-fit")
        self.progress = make(widgets.HTML, "nbt-bulk-progress")
        box = shared(widgets.Layout)
        self.confirm = make(widgets.HBox, "nbt-bulk-confirm", "nbt-hidden",
                            children=[self.question, self.yes, self.no])
        self.all.observe(guard(lambda _c: self.update()), "value")
        self.cancel.on_click(guard(lambda _b: self.ask("cancel")))
        self.replay.on_click(guard(lambda _b: self.ask("replay")))
        self.yes.on_click(guard(lambda _b: self.confirmed()))
        self.no.on_click(guard(lambda _b: self._drop()))
        super().__init__([widgets.HBox([self.all, self.count, self.cancel, self.replay],
                                       layout=box), self.confirm, self.progress], layout=box)
        self.add_class("nbt-bulk")
        self.update()

    def targets(self) -> list[str]:
        if self.all.value:
            return matching_ids(self.engine, self.table.query())
        return sorted(self.table.picked)

    def update(self) -> None:
        """Refresh the count and the buttons' state (cheap: no query unless "all" is ticked)."""
        if self.all.value:
            n = self.table.total
            text = f"all {n:,} matching" + (f" (the newest {MAX_RUNS:,})" if n > MAX_RUNS else "")
        else:
            n = len(self.table.picked)
            text = f"{n:,} selected" if n else "pick rows, or"
        self.count.value = f"&nbsp;{text}&nbsp;"
        self.cancel.disabled = self.replay.disabled = n == 0

    def ask(self, action: str) -> None:
        ids = self.targets()
        if not ids:
            return
        if len(ids) > CONFIRM_OVER:
            self._pending = (action, ids)
            self.question.value = (f"<b>{action.capitalize()} {len(ids):,} runs?</b> "
                                   "This cannot be undone.&nbsp;")
            self.yes.description = f"Yes, {action} {len(ids):,}"
            hide(self.confirm, False)
            return
        self.run(action, ids)

    def confirmed(self) -> None:
        pending, self._pending = self._pending, None
        hide(self.confirm)
        if pending is not None:
            self.run(*pending)

    def _drop(self) -> None:
        self._pending = None
        hide(self.confirm)
        self.progress.value = ""

    def run(self, action: str, ids: list[str]) -> None:
        """Act on each run, reporting progress every few runs; a run that refuses is counted,
        not fatal (it may have ended meanwhile)."""
        runs = self.engine.runs
        done = skipped = 0
        newest: str | None = None
        step = max(1, len(ids) // 20)
        self.cancel.disabled = self.replay.disabled = True
        try:
            for i, run_id in enumerate(ids, 1):
                try:
                    if action == "cancel":
                        ok: Any = runs.cancel(run_id)
                    else:
                        ok = runs.replay(run_id)
                        newest = newest or ok.id
                except NbtasksError:
                    ok = False
                done += bool(ok)
                skipped += not ok
                if i % step == 0 or i == len(ids):
                    self.progress.value = message(
                        f"{'canceling' if action == 'cancel' else 'replaying'}… {i:,}/{len(ids):,}",
                        ok=True)
        finally:
            self.update()
        verb = "canceled" if action == "cancel" else "replayed"
        tail = f", {skipped:,} had already ended" if action == "cancel" and skipped else (
            f", {skipped:,} could not be replayed" if skipped else "")
        self.progress.value = message(f"{verb} {done:,} of {len(ids):,} runs{tail}", ok=True)
        # The picks live in the kernel (the page draws its boxes from each row's "picked"), so
        # forgetting them here unticks every box at the table's next draw.
        self.table.picked.clear()
        self.all.value = False
        self.update()
        self._after(newest)
