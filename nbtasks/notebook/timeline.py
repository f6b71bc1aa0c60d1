"""The timeline widget: the runs of a window per queue, coloured by status (an anywidget).

>>> view = Timeline(engine, window=3600)                           # doctest: +SKIP
>>> view.on_open(lambda target: print(target["run"]))            # a bar was clicked
>>> view.refresh()                                                # re-read the window

What it holds is `timeline_model.build_timeline`'s: queried by the window, with busy queues
summarised. In the browser, hovering a bar shows the run, clicking it sets `clicked`
(`{"run": id, ...}`), the wheel zooms, dragging pans, and "now" advances once a second while the
widget is on screen (no kernel work: the page keeps the clock; the kernel only re-reads when
runs change).

`TimelineView` is the dashboard's tab: a window picker above the widget. It re-reads at most
every `MIN_GAP` seconds, and only while its tab is open (the dashboard decides when).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import traitlets

from ._ui import Guard, make, shared, widgets
from .timeline_model import MAX_LANES, assign_lanes, build_timeline
from .trace import ClickableWidget, asset

if TYPE_CHECKING:
    from .._engine import Engine

MIN_GAP = 2.0
WINDOWS = (("last minute", 60.0), ("last 5 minutes", 300.0), ("last 15 minutes", 900.0),
           ("last hour", 3600.0), ("last day", 86400.0))


class Timeline(ClickableWidget):
    """Runs of the last `window` seconds per queue; `refresh()` re-reads them."""

    _esm = asset("common.js", "restart.js", "timeline.js")
    _css = asset("common.css", "timeline.css")
    data = traitlets.Dict().tag(sync=True)

    def __init__(self, engine: Engine | None = None, window: float = 300.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if engine is None:
            from .._configure import default_engine

            engine = default_engine()
        self.engine = engine
        self.window = float(window)
        self.add_class("nbt-timeline-widget")

    def __repr__(self) -> str:
        return f"<Timeline last {self.window:g}s>"

    def refresh(self) -> None:
        self.data = build_timeline(self.engine.store, self.engine.clock.now(), self.window)


class TimelineView(widgets.VBox):  # type: ignore[misc]
    """The window picker and the timeline. `refresh()` re-reads; `due()` says when it may again."""

    def __init__(self, engine: Engine, guard: Guard) -> None:
        self.engine = engine
        self.drawn_at = float("-inf")
        self.window = make(widgets.Dropdown, "nbt-timeline-window", options=WINDOWS,
                           value=300.0)
        self.plot = Timeline(engine, self.window.value)
        self.window.observe(guard(lambda _c: self.refresh()), "value")
        super().__init__([self.window, self.plot], layout=shared(widgets.Layout))
        self.add_class("nbt-timeline")

    def refresh(self) -> None:
        self.plot.window = self.window.value
        self.plot.refresh()
        self.drawn_at = time.monotonic()

    def due(self) -> float:
        """Seconds until the next re-read is allowed (0: now)."""
        return max(0.0, self.drawn_at + MIN_GAP - time.monotonic())


__all__ = ("MAX_LANES", "MIN_GAP", "WINDOWS", "Timeline", "TimelineView", "assign_lanes")
