"""The timeline: recent runs as bars per queue, coloured by status, drawn with matplotlib.

Each queue gets as many lanes as it executed runs side by side (up to `MAX_LANES`), so its
concurrency shows at a glance: a queue with limit 2 has two lanes. The coloured bar is a run's
execution, up to now while it runs; the thin grey bar before it is the time it waited for a slot.

The figure is rendered off-screen (Agg, no pyplot state) to a PNG shown as an <img> inside an
HTML widget, which every frontend displays, Voila and exported notebooks included. (An Image
widget first drawn while its notebook cell is scrolled away lays out at 0x0 in JupyterLab 4 until
it is redrawn; plain HTML has no such trouble.) Rendering costs tens of
milliseconds, so the dashboard redraws it only while its tab is open and at most every
`MIN_GAP` seconds.
"""

from __future__ import annotations

import base64
import heapq
import io
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from . import queries
from ._ui import Guard, make, shared, widgets
from .display import COLOURS

if TYPE_CHECKING:
    from .._engine import Engine

MAX_LANES = 8
MIN_GAP = 2.0
WINDOWS = (("last minute", 60.0), ("last 5 minutes", 300.0), ("last 15 minutes", 900.0),
           ("last hour", 3600.0))


def assign_lanes(spans: list[tuple[float, float]]) -> list[int]:
    """Interval packing: each (start, end) takes the lowest free lane; at most MAX_LANES.

    >>> assign_lanes([(0, 10), (1, 2), (3, 4), (11, 12)])
    [0, 1, 1, 0]
    """
    busy: list[tuple[float, int]] = []  # (end, lane) of lanes in use
    free: list[int] = []
    used = 0
    lanes = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda i: spans[i]):
        start, end = spans[i]
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        elif used < MAX_LANES:
            lane, used = used, used + 1
        else:  # more at once than lanes: share the one that frees up first
            lane = heapq.heappop(busy)[1]
        lanes[i] = lane
        heapq.heappush(busy, (end, lane))
    return lanes


def _ago(seconds: float, _pos: Any = None) -> str:
    seconds = -seconds
    if seconds < 1:
        return "now"
    if seconds % 60:
        return f"-{seconds:.0f}s"
    return f"-{seconds / 60:.0f} min"


def _rect(left: float, width: float, y: float, height: float) -> list[tuple[float, float]]:
    top, bottom = y - height / 2, y + height / 2
    return [(left, top), (left + width, top), (left + width, bottom), (left, bottom)]


def render_png(spans: list[queries.Span], now: float, window: float) -> bytes:
    """The timeline of `spans` over the last `window` seconds, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    by_queue: dict[str, list[queries.Span]] = defaultdict(list)
    for s in spans:
        by_queue[s.queue].append(s)
    queues = sorted(by_queue)
    rows: list[tuple[float, queries.Span]] = []  # (y, span)
    ticks: list[tuple[float, str]] = []
    y = 0.0
    for name in queues:
        members = by_queue[name]
        lanes = assign_lanes([(s.started if s.started is not None else s.created,
                               s.ended if s.ended is not None else now) for s in members])
        height = max(lanes) + 1
        rows += [(y + lane, s) for lane, s in zip(lanes, members, strict=True)]
        ticks.append((y + (height - 1) / 2, name))
        y += height + 0.6
    least = window / 250  # a 5 ms run still shows as a sliver
    fig = Figure(figsize=(10, min(8.0, max(1.8, 0.9 + 0.22 * y))), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(-window, 0)
    if rows:
        waits = [(yy, s.created, s.started if s.started is not None else
                  (s.ended if s.ended is not None else now), "#d0d7de") for yy, s in rows]
        runs = [(yy, s.started, s.ended if s.ended is not None else now,
                 COLOURS.get(s.status, "#57606a")) for yy, s in rows if s.started is not None]
        for bars, thick in ((waits, 0.25), (runs, 0.75)):
            ax.add_collection(PolyCollection(
                [_rect(start - now, max(least, end - start), yy, thick)
                 for yy, start, end, _ in bars],
                facecolors=[c for *_, c in bars], edgecolors="white", linewidths=0.4))
        ax.set_yticks([t for t, _ in ticks], [n for _, n in ticks], fontsize=8)
        ax.set_ylim(y - 0.4, -0.8)
        present = sorted({s.status for _, s in rows})
        ax.legend(handles=[Patch(color=COLOURS.get(s, "#57606a"), label=s) for s in present],
                  loc="upper left", fontsize=7, ncols=min(len(present), 6), frameon=False,
                  bbox_to_anchor=(0, 1.02, 1, 0.1))
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no runs in this window", ha="center", va="center",
                transform=ax.transAxes, color="#57606a")
    ax.xaxis.set_major_locator(MultipleLocator(window / 5))
    ax.xaxis.set_major_formatter(FuncFormatter(_ago))
    ax.grid(axis="x", color="#eaeef2")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class TimelineView(widgets.VBox):  # type: ignore[misc]
    """The plot and a window picker. `refresh()` redraws; `due()` says when it may again."""

    def __init__(self, engine: Engine, guard: Guard) -> None:
        self.engine = engine
        self.drawn_at = float("-inf")
        self.window = make(widgets.Dropdown, "nbt-timeline-window", options=WINDOWS,
                           value=300.0)
        self.png = b""
        self.image = make(widgets.HTML, "nbt-timeline-image")
        self.window.observe(guard(lambda _c: self.refresh()), "value")
        super().__init__([self.window, self.image], layout=shared(widgets.Layout))
        self.add_class("nbt-timeline")

    def refresh(self) -> None:
        now = self.engine.clock.now()
        spans = queries.spans(self.engine.store, now - self.window.value)
        self.png = render_png(spans, now, self.window.value)
        self.image.value = ('<img class="nbt-timeline-png" style="max-width:100%" alt="timeline" '
                            f'src="data:image/png;base64,{base64.b64encode(self.png).decode()}">')
        self.drawn_at = time.monotonic()

    def due(self) -> float:
        """Seconds until the next redraw is allowed (0: now)."""
        return max(0.0, self.drawn_at + MIN_GAP - time.monotonic())
