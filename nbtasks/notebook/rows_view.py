"""`RowsView`: the runs table's page of rows as one anywidget, not five widgets a row.

Each row used to be a box of a check box, two HTML widgets and a button: a hundred widget
models for a 20-row page, each one a comm to open and a state to send, which was most of the
kernel time of opening a dashboard. Here the page is one model holding plain data (`rows`, a
list of dicts of display strings); `static/rows.js` draws it and updates it in place, and
reports a click on a run id or a pick box by setting `clicked` (as the trace and the timeline
do). The rows are data, never HTML, so nothing in them needs escaping.

>>> view = RowsView(page_size=20, pickable=True)                   # doctest: +SKIP
>>> view.on_click(lambda click: print(click["kind"], click["run"]))
>>> view.rows = [{"id": "run_...", "status": "COMPLETED", ...}]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import traitlets

from .display import COLOURS
from .trace import ClickableWidget, asset


class RowsView(ClickableWidget):
    """The rows of one page (see the module docstring); `blank` rows keep the page's height."""

    _esm = asset("rows.js")
    _css = asset("rows.css")
    rows: Any = traitlets.List().tag(sync=True)
    page_size = traitlets.Int(20).tag(sync=True)
    pickable = traitlets.Bool(True).tag(sync=True)
    colours = traitlets.Dict().tag(sync=True)

    def __init__(self, page_size: int, pickable: bool = True, **kwargs: Any) -> None:
        super().__init__(page_size=page_size, pickable=pickable, colours=dict(COLOURS),
                         **kwargs)
        self.add_class("nbt-runs")

    def on_click(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """`callback({"kind": "open" | "pick", "run": id, "value": picked})` per click."""
        return self.on_open(callback)

    def click(self, kind: str, run_id: str, value: bool | None = None) -> None:
        """Do what the page does on a click: code and tests drive the same path."""
        n = int(self.clicked.get("n", 0)) + 1 if self.clicked else 1
        self.clicked = {"kind": kind, "run": run_id, "n": n,
                        **({} if value is None else {"value": value})}
