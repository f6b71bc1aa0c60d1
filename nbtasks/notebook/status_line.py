"""Compact live widgets: a run's status line, and a batch's progress bar.

The status line is what a RunHandle (or a running Run) shows as a cell's last value:

>>> handle = etl.trigger({"day": "2026-01-01"})        # doctest: +SKIP
>>> handle
run_8c2…  etl  EXECUTING  attempt 1 · 2.1 s   [Cancel]

It listens to the engine's feed for its one run and stops listening once the run is final, so a
notebook full of old handles costs nothing. Its text/plain form is the handle's repr. The run id
opens the run in the newest open dashboard; a run held by a paused queue says so. Under Voila
the line has no Cancel button (a shared page is read-only).

The batch bar is the same idea for many runs: done/total, and with `counts=True` (a batch
handle as a cell's last value) the runs per status, live until every run is final.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .._status import FINAL, RunStatus
from . import queries
from ._ui import button, make, shared, widgets
from .display import badge, counts_html, duration, esc, under_voila
from .feed import DONE, feed_for
from .reload_note import ReloadNoted
from .restart_note import RestartNote, restart_note

if TYPE_CHECKING:
    from .._engine import Engine
    from .._events import RunEvent


class _FedBox(ReloadNoted, widgets.HBox):  # type: ignore[misc]
    """An HBox fed by the engine's event feed: closing it stops the feed and its children."""

    _feed: Any

    def close(self) -> None:
        self._feed.remove(self)
        for child in self.children:
            if not isinstance(child, RestartNote):  # shared by every widget: not ours to close
                child.close()
        super().close()


class StatusLine(_FedBox):
    """Badge, id, task, attempt and time, and a Cancel button while the run can be canceled."""

    def __init__(self, engine: Engine, run_id: str, task_id: str) -> None:
        self.engine = engine
        self.run_id = run_id
        self.task_id = task_id
        self.run_ids = (run_id,)
        self.status = "QUEUED"
        self._lock = threading.Lock()
        self.read_only = under_voila()
        self._badge = make(widgets.HTML)
        self._open = button(run_id, "nbt-link", "nbt-status-open", width="220px",
                            tooltip="open in the dashboard")
        self._open.on_click(self._on_open)
        self._text = make(widgets.HTML, "nbt-status-text")
        self._cancel = button("Cancel", "nbt-status-cancel")
        self._cancel.on_click(self._on_cancel)
        self._note = restart_note()
        self._parts = [self._badge, self._open, self._text, self._note] + (
            [] if self.read_only else [self._cancel])
        super().__init__(self._parts, layout=shared(widgets.Layout))
        self.add_class("nbt-status-line")
        self._feed = feed_for(engine)
        self._feed.add(self)  # before the first read, so no change slips between the two
        if self._render() == DONE:
            self._feed.remove(self)

    def update(self, events: list[RunEvent]) -> float | None:
        return self._render()

    def _render(self, note: str = "") -> float | None:
        with self._lock:
            row = queries.row(self.engine.store, self.run_id)
            if row is None:  # triggered but not committed yet: the next event brings it
                return None
            status = row.status
            if not row.is_final:
                # The stored row lags the run by up to one group commit (a run starts after its
                # row is committed, and says EXECUTING in the next): the engine's own state is
                # the live one, as handle.status is.
                live = getattr(getattr(self.engine, "scheduler", None), "active", {}).get(
                    self.run_id)
                if live is not None:
                    status = live.status.value
            self.status = status
            took = esc(duration(row.duration(self.engine.clock.now())))
            attempt = f"attempt {row.attempt_count}" if row.attempt_count else "not started"
            self._badge.value = badge(status)
            paused = ""
            if status == "QUEUED" and row.queue in paused_queues(self.engine):
                paused = ' · <span class="nbt-warn nbt-paused">queue paused</span>'
            self._text.value = (f"<b>{esc(row.task_id)}</b> "
                                f"· {attempt}{' · ' + took if took else ''}{paused}"
                                f"{' · ' + esc(note) if note else ''}")
            if row.is_final:
                self._cancel.disabled = True
                self.children = [self._badge, self._open, self._text, self._note]
                self.add_class("nbt-final")
                return DONE
            return None

    def _on_open(self, _button: object) -> None:
        from .dashboard import dashboard_for

        dash = dashboard_for(self.engine)
        if dash is None:
            self._render("open nbtasks.dashboard() to see this run in full")
            return
        dash.show_run(self.run_id)

    def _on_cancel(self, _button: object) -> None:
        if self.read_only:
            return
        try:
            self.engine.runs.cancel(self.run_id)
            note = ""
        except Exception as exc:  # another kernel owns it, the engine closed: say so in the line
            note = f"cancel failed: {exc}"
        self.engine.runs._fresh()
        if self._render(note) == DONE:
            self._feed.remove(self)


    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} task={self.task_id!r} {self.status}>"


_FINAL = frozenset(s.value for s in FINAL)


class BatchProgress(_FedBox):
    """A batch's bar and label, `12/50 done · 2 failed`; danger style once any run failed."""

    def __init__(self, engine: Engine, batch_id: str, run_ids: list[str],
                 counts: bool = False) -> None:
        self.engine = engine
        self.batch_id = batch_id
        self.run_ids = frozenset(run_ids)
        self.counts = counts
        self._lock = threading.Lock()
        self._done: dict[str, str] = {}
        self._status: dict[str, str] = {}
        self._queue: dict[str, str] = {}  # run -> its queue, read once per run when it waits
        self._bar = make(widgets.IntProgress, "nbt-progress-bar", min=0, max=len(self.run_ids),
                         value=0)
        self._label = make(widgets.HTML, "nbt-progress-label")
        super().__init__([self._bar, self._label, restart_note()], layout=shared(widgets.Layout))
        self.add_class("nbt-progress")
        self._feed = feed_for(engine)
        self._feed.add(self)
        self._read()
        with self._lock:
            self._show()

    def _read(self) -> None:
        self.engine.runs._fresh()
        known = queries.statuses(self.engine.store, list(self.run_ids))
        with self._lock:
            self._status.update(known)
            self._done.update((i, s) for i, s in known.items() if s in _FINAL)

    def update(self, events: list[RunEvent]) -> float | None:
        with self._lock:
            self._status.update((e.run_id, e.status.value) for e in events)
            self._done.update((e.run_id, e.status.value) for e in events if e.status in FINAL)
            self._show()
            return DONE if len(self._done) == len(self.run_ids) else None

    def _show(self) -> None:
        failed = sum(s != RunStatus.COMPLETED.value for s in self._done.values())
        complete = len(self._done) == len(self.run_ids)
        self._bar.value = len(self._done)
        self._bar.bar_style = "danger" if failed else ("success" if complete else "")
        counts: dict[str, int] = {}
        for status in self._status.values():
            counts[status] = counts.get(status, 0) + 1
        paused = ""
        if counts.get("QUEUED") and not complete:
            queues = self._waiting_queues() & paused_queues(self.engine)
            if queues:
                paused = (' · <span class="nbt-warn nbt-paused">queue paused: '
                          f'{esc(", ".join(sorted(queues)))}</span>')
        self._label.value = (f"<code>{esc(self.batch_id)}</code>: {len(self._done)}/"
                             f"{len(self.run_ids)} done" + (f" · {failed} failed" if failed else "")
                             + (f" · {counts_html(counts)}" if self.counts else "") + paused)

    def _waiting_queues(self) -> set[str]:
        """The queues this batch's QUEUED runs wait in (a paused queue the batch doesn't use is
        not its problem). A run's queue never changes, so each is read from the store once."""
        waiting = [i for i, s in self._status.items() if s == "QUEUED"]
        missing = [i for i in waiting if i not in self._queue]
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            _, rows = self.engine.store.select(
                f"SELECT id, queue FROM runs WHERE id IN ({', '.join('?' * len(chunk))})",
                tuple(chunk))
            self._queue.update((r[0], r[1]) for r in rows)
        return {self._queue[i] for i in waiting if i in self._queue}

    def finish(self, ok: bool) -> None:
        """The wait ended: stop listening, and show the final count read from the store (the
        feed's last throttled update may still be on its way). A wait that raised shows danger."""
        self._feed.remove(self)
        self._read()
        with self._lock:
            self._show()
            if not ok:
                self._bar.bar_style = "danger"
                self._label.value += " · wait stopped"


    def __repr__(self) -> str:
        return f"<batch {self.batch_id}: {len(self._done)}/{len(self.run_ids)} done>"


def paused_queues(engine: Engine) -> set[str]:
    """Paused queue names: the dispatcher's live state, one loop round trip (so it is asked
    only while something waits in a queue)."""
    if engine.closed:
        return set()
    return {q["name"] for q in engine.queues.list() if q.get("paused")}
