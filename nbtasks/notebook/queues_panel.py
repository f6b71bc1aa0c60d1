"""Queues: running and queued counts, limits, busy concurrency keys, and pause/resume.

The numbers come from the dispatcher's own snapshot (`queues.list()`, taken on the engine loop),
since queue occupancy is live state that the store does not hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._ui import Guard, button, make, shared, widgets
from .display import esc

if TYPE_CHECKING:
    from .._engine import Engine


def _limit(value: int | None) -> str:
    return "∞" if value is None else str(value)


class QueueRow(widgets.HBox):  # type: ignore[misc]
    def __init__(self, engine: Engine, guard: Guard, name: str, after: Any) -> None:
        self.engine = engine
        self.name = name
        self.paused = False
        self.text = make(widgets.HTML, "nbt-queue-text", width="720px")
        self.toggle = button("Pause", "nbt-queue-toggle", width="90px")
        self.toggle.on_click(guard(lambda _b: self._toggle(after)))
        super().__init__([self.text, self.toggle], layout=shared(widgets.Layout))
        self.add_class("nbt-queue")

    def show(self, q: dict[str, Any]) -> None:
        self.paused = bool(q["paused"])
        keys = ", ".join(f"{esc(k)}: {v['running']} running, {v['queued']} queued"
                         for k, v in list(q["keys"].items())[:5])
        more = f" … +{len(q['keys']) - 5} keys" if len(q["keys"]) > 5 else ""
        state = ' <b style="color:#bf8700">PAUSED</b>' if self.paused else ""
        self.text.value = (
            f"<code>{esc(q['name'])}</code>{state}: <b>{q['running']}</b> running, "
            f"<b>{q['queued']}</b> queued · limit {_limit(q['concurrency_limit'])} per key, "
            f"total {_limit(q['total'])}"
            + (f"<br><span style='font-size:0.85em;color:#57606a'>{keys}{more}</span>"
               if keys else ""))
        self.toggle.description = "Resume" if self.paused else "Pause"
        self.toggle.button_style = "success" if self.paused else ""

    def _toggle(self, after: Any) -> None:
        (self.engine.queues.resume if self.paused else self.engine.queues.pause)(self.name)
        after()


class QueuesPanel(widgets.VBox):  # type: ignore[misc]
    """One row per queue the engine knows, created as queues appear and refilled in place."""

    def __init__(self, engine: Engine, guard: Guard) -> None:
        self.engine = engine
        self._guard = guard
        self._rows: dict[str, QueueRow] = {}
        self.empty = make(widgets.HTML,
                          value="<i>no queues yet: a queue appears when its first run does</i>")
        super().__init__([self.empty], layout=shared(widgets.Layout))
        self.add_class("nbt-queues")

    def refresh(self) -> None:
        snapshot = sorted(self.engine.queues.list(), key=lambda q: q["name"])
        for q in snapshot:
            row = self._rows.get(q["name"])
            if row is None:
                row = self._rows[q["name"]] = QueueRow(self.engine, self._guard, q["name"],
                                                       self.refresh)
            row.show(q)
        names = [q["name"] for q in snapshot]
        children = [self._rows[n] for n in names] or [self.empty]
        if list(self.children) != children:  # type: ignore[has-type]
            self.children = children
