"""The run trace widget: one run's waterfall (see `trace_model` for what it holds).

>>> trace = trace_for(engine, handle.id)                          # doctest: +SKIP
>>> trace.on_open(lambda target: print(target["run"], target["span"]))
>>> trace                                                          # renders in the notebook
>>> trace.show(other_id); trace.refresh()                          # switch run; re-read

An anywidget: its module and stylesheet are files in this package (`static/`), read once at
import, so it needs no CDN, no build step and no frontend extension beyond anywidget's own. It
draws in JupyterLab, Notebook 7, VS Code and Voila alike, in the page's theme colours.

Clicking a row sets the `clicked` trait to `{"run", "span", "kind", "key", "n"}`: `run` is the
run to open (a child's id for a child row, else this run), `span` the span id for a span row.
The widget itself never acts on a click; the dashboard (or `on_open`) decides what opening means.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import anywidget
    import traitlets
except ImportError as exc:  # pragma: no cover - anywidget comes with the notebook extra
    raise ImportError("the run trace and the timeline need anywidget, a dependency of "
                      "nbtasks: pip install anywidget") from exc

from .display import label_cells, user_traceback
from .reload_note import ReloadNoted
from .trace_model import build_trace

if TYPE_CHECKING:
    from .._engine import Engine

STATIC = Path(__file__).parent / "static"


def asset(*names: str) -> str:
    """Static files joined into one module or stylesheet (a shared part first)."""
    return "\n".join((STATIC / name).read_text(encoding="utf-8") for name in names)


Opener = Callable[[dict[str, Any]], None]


class ClickableWidget(ReloadNoted, anywidget.AnyWidget):
    """An anywidget whose frontend reports clicks through the synced `clicked` trait."""

    clicked = traitlets.Dict().tag(sync=True)

    def on_open(self, callback: Opener) -> Callable[[], None]:
        """Call `callback(target)` on each click in the browser; returns an unsubscriber."""

        def handler(change: dict[str, Any]) -> None:
            if change["new"]:
                callback(dict(change["new"]))

        self.observe(handler, "clicked")
        return lambda: self.unobserve(handler, "clicked")


class RunTrace(ClickableWidget):
    """The waterfall of one run. `show(run_id)` switches run, `refresh()` re-reads it."""

    _esm = asset("common.js", "restart.js", "trace.js")
    _css = asset("common.css", "trace.css")
    data = traitlets.Dict().tag(sync=True)

    def __init__(self, engine: Engine | None = None, run_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.run_id: str | None = None
        self.add_class("nbt-trace-widget")
        self.show(run_id)

    def __repr__(self) -> str:  # cheap: no query
        return f"<RunTrace {self.run_id or '(no run)'}>"

    def show(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.refresh()

    def refresh(self) -> None:
        """Read the run again (the dashboard calls this when the feed reports a change)."""
        if self.engine is None or self.run_id is None:
            self.data = {"message": "no run selected"}
            return
        data = build_trace(self.engine.store, self.run_id, self.engine.clock.now())
        for error in data.get("errors", ()):  # as the detail shows them: cells named, no engine frames
            error["traceback"] = label_cells(user_traceback(error.get("traceback") or ""))
        self.data = data

    @property
    def is_live(self) -> bool:
        """True while the shown run is not final: worth refreshing on its events."""
        run: dict[str, Any] | None = self.data.get("run")
        return run is not None and not run["final"]


def trace_for(engine: Engine | None, run_id: str) -> RunTrace:
    """The trace widget for `run_id` (on the default engine when `engine` is None).

    Raises RunNotFoundError for an id the store does not hold.
    """
    if engine is None:
        from .._configure import default_engine

        engine = default_engine()
    engine.runs.retrieve(run_id)  # pending writes land first; an unknown id raises here
    return RunTrace(engine, run_id)


__all__ = ("ClickableWidget", "RunTrace", "asset", "trace_for")
