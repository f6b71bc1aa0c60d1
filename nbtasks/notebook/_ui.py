"""Shared widget plumbing: the ipywidgets import, the dashboard's CSS, and guarded callbacks.

Widget callbacks arrive on the kernel thread and feed updates on the feed thread; both go
through one `Guard` per dashboard, which takes the dashboard's lock (so neither sees the other's
half-made state) and turns an exception into a message on screen instead of a traceback lost in
the kernel log.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

try:
    import ipywidgets as widgets
except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency, but may be removed
    raise ImportError(
        "the nbtasks dashboard and live reprs need ipywidgets: pip install ipywidgets") from exc

from .._errors import NbtasksError
from .display import esc

log = logging.getLogger("nbtasks.notebook")

__all__ = ("CSS", "Guard", "button", "classed", "hide", "is_hidden", "make", "message", "shared",
           "style", "widgets")

F = TypeVar("F", bound=Callable[..., Any])

#: One stylesheet for every dashboard part; class names are also the tests' stable hooks.
CSS = """<style>
.nbt-hidden { display: none !important; }
.nbt-dashboard { max-width: 1400px; }
.nbt-summary { font-size: 0.95em; }
.nbt-runs { overflow-x: auto !important; }
.nbt-row { border-bottom: 1px solid #eaeef2; align-items: center; min-height: 28px;
  min-width: max-content; }
.nbt-row > * { flex-shrink: 0 !important; }
.nbt-row:hover { background: #f6f8fa; }
.nbt-row.nbt-selected { background: #ddf4ff; }
.nbt-cells { display: flex; font-size: 0.9em; }
.nbt-cells > span, .nbt-head > span { padding: 0 6px; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; flex: none; }
.nbt-head { display: flex; font-weight: 600; font-size: 0.85em; color: #57606a; }
.nbt-c-status { width: 140px; } .nbt-c-id { width: 220px; }
.nbt-head .nbt-c-status { width: 132px; } .nbt-head .nbt-c-id { width: 212px; }
.nbt-c-task { width: 140px; } .nbt-c-created { width: 80px; }
.nbt-c-dur { width: 72px; text-align: right; } .nbt-c-att { width: 36px; text-align: right; }
.nbt-c-machine { width: 76px; } .nbt-c-queue { width: 140px; } .nbt-c-tags { width: 150px; }
.widget-button.nbt-link { background: none; box-shadow: none; color: #0969da;
  font-family: var(--jp-code-font-family, monospace); text-align: left; padding: 0 4px; }
.widget-button.nbt-link:hover { text-decoration: underline; }
.nbt-detail { border-top: 2px solid #d0d7de; margin-top: 8px; padding-top: 4px; }
.nbt-detail pre { background: #f6f8fa; padding: 6px; margin: 2px 0 8px 0; white-space: pre-wrap;
  line-height: 1.35; }
.nbt-facts { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 4px 0; }
.nbt-fact { color: #57606a; }
.nbt-detail .nbt-table td, .nbt-detail .nbt-table th { line-height: 1.35; }
.nbt-message { color: #cf222e; }
.nbt-ok { color: #1a7f37; }
</style>"""


_shared: dict[tuple[Any, ...], Any] = {}
_shared_lock = threading.Lock()


def shared(cls: Any, **traits: Any) -> Any:
    """One Layout (or style) object per distinct set of traits, reused by many widgets.

    Every widget otherwise brings its own Layout and style, three comm messages where one
    would do; sharing them makes a dashboard open three times faster in a kernel. Shared objects
    must never be changed, which is why `hide()` works with a CSS class, not `layout.display`.
    """
    key = (cls, tuple(sorted(traits.items())))
    with _shared_lock:
        obj = _shared.get(key)
        if obj is None or obj.comm is None:  # closed (Widget.close_all()): make a new one
            obj = _shared[key] = cls(**traits)
        return obj


def make(cls: Any, *names: str, width: str | None = None, height: str | None = None,
         **kw: Any) -> Any:
    """`cls(**kw)` with a shared Layout and style and the given CSS classes."""
    kw.setdefault("layout", shared(widgets.Layout, width=width, height=height))
    trait = cls.class_traits().get("style")
    if trait is not None and "style" not in kw:
        kw["style"] = shared(trait.klass)
    return classed(cls(**kw), *names)


def style() -> widgets.HTML:
    return make(widgets.HTML, "nbt-hidden", value=CSS)


def classed(widget: Any, *names: str) -> Any:
    """Add CSS classes (stable hooks for styles and browser tests) and return the widget."""
    for name in names:
        widget.add_class(name)
    return widget


def button(label: str, *names: str, width: str | None = None, **kw: Any) -> widgets.Button:
    return make(widgets.Button, *names, width=width, description=label, **kw)


def hide(widget: Any, hidden: bool = True) -> None:
    """Hide or show with the `nbt-hidden` class (layouts are shared; see `shared`)."""
    if hidden != is_hidden(widget):
        (widget.add_class if hidden else widget.remove_class)("nbt-hidden")


def is_hidden(widget: Any) -> bool:
    return "nbt-hidden" in widget._dom_classes


class Guard:
    """Serialises every dashboard change behind one re-entrant lock (see the module docstring)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.lock = threading.RLock()
        self.report = report

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                try:
                    return fn(*args, **kwargs)
                except NbtasksError as exc:  # the user's input or a run's state: say so
                    self.report(esc(exc))
                except Exception as exc:  # a bug: keep the dashboard alive, log the traceback
                    log.exception("nbtasks dashboard callback failed")
                    self.report(f"{esc(type(exc).__name__)}: {esc(exc)}")
                return None

        return guarded  # type: ignore[return-value]


def message(text: str = "", ok: bool = False) -> str:
    """A one-line status message: red for problems, green for done."""
    return f'<span class="{"nbt-ok" if ok else "nbt-message"}">{text}</span>' if text else ""
