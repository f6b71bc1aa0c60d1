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

__all__ = ("CSS", "THEME", "Guard", "button", "classed", "hide", "is_hidden", "make", "message", "shared",
           "style", "widgets")

F = TypeVar("F", bound=Callable[..., Any])

#: The theme's colours, from JupyterLab's CSS variables, then VS Code's, then GitHub's light
#: palette (Voila's and exported pages' fallback). Every colour below goes through these, so the
#: dashboard reads the same in JupyterLab Light and Dark, Notebook 7, Voila and VS Code. The
#: secondary text is mixed from the theme's own text and background rather than taken from
#: `--jp-ui-font-color2`, whose 54% black is just under WCAG's 4.5:1 on a light grey.
THEME = """
  --nbt-bg: var(--jp-layout-color1, var(--vscode-editor-background, #ffffff));
  --nbt-bg2: var(--jp-layout-color2, var(--vscode-editorWidget-background, #f6f8fa));
  --nbt-fg: var(--jp-ui-font-color1, var(--vscode-editor-foreground, #1f2328));
  --nbt-fg2: color-mix(in srgb, var(--nbt-fg) 78%, var(--nbt-bg));
  --nbt-border: var(--jp-border-color2, var(--vscode-panel-border, #d0d7de));
  --nbt-accent: var(--jp-brand-color1, var(--vscode-focusBorder, #0969da));
  --nbt-link: var(--jp-content-link-color, var(--vscode-textLink-foreground, #0969da));
  --nbt-error: var(--jp-error-color1, var(--vscode-errorForeground, #cf222e));
  --nbt-ok: var(--jp-success-color1, var(--vscode-testing-iconPassed, #1a7f37));
  --nbt-warn: var(--jp-warn-color1, var(--vscode-editorWarning-foreground, #bf8700));
  --nbt-error-text: color-mix(in srgb, var(--nbt-error) 80%, var(--nbt-fg));
  --nbt-ok-text: color-mix(in srgb, var(--nbt-ok) 70%, var(--nbt-fg));
  --nbt-warn-text: color-mix(in srgb, var(--nbt-warn) 60%, var(--nbt-fg));
"""

#: One stylesheet for every dashboard part; class names are also the tests' stable hooks.
#: ipywidgets' success and warning buttons write the inverse text colour on the theme's green
#: and orange: 4.1:1 and 2.7:1 in JupyterLab Light, under WCAG's 4.5:1. Here they are a tint of
#: that colour under the theme's own text, which reads in every theme (primary and danger pass).
CSS = """<style>
.nbt-themed {""" + THEME + """  color: var(--nbt-fg); }
.nbt-themed .nbt-tabs .lm-TabBar-tab, .nbt-themed .nbt-tabs .lm-TabBar-tabLabel {
  color: var(--nbt-fg2) !important; }
.nbt-themed .nbt-tabs .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel {
  color: var(--nbt-fg) !important; }
.nbt-hidden { display: none !important; }
.nbt-dashboard { max-width: 1400px; min-width: 0; }
.nbt-summary { font-size: 0.95em; }
.nbt-scroll { overflow-x: auto !important; overflow-y: hidden; max-width: 100%; }
.nbt-filters { flex-wrap: wrap; row-gap: 2px; }
.nbt-runs { min-width: max-content; }
.nbt-row { border-bottom: 1px solid var(--nbt-border); align-items: center; min-height: 28px;
  min-width: max-content; }
.nbt-row > * { flex-shrink: 0 !important; }
.nbt-row:hover { background: var(--nbt-bg2); }
.nbt-row.nbt-selected { background: color-mix(in srgb, var(--nbt-accent) 22%, var(--nbt-bg));
  box-shadow: inset 3px 0 0 var(--nbt-accent); }
.nbt-row.nbt-flash { animation: nbt-flash 1.6s ease-out; }
@keyframes nbt-flash { from { background: color-mix(in srgb, var(--nbt-accent) 55%, var(--nbt-bg)); } }
.nbt-row.nbt-blank { visibility: hidden; }
.nbt-cells { display: flex; font-size: 0.9em; }
.nbt-cells > span, .nbt-head > span { padding: 0 6px; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; flex: none; }
.nbt-head { display: flex; font-weight: 600; font-size: 0.85em; color: var(--nbt-fg2); }
.nbt-c-pick { width: 28px; } .nbt-c-status { width: 140px; } .nbt-c-id { width: 220px; }
.nbt-head .nbt-c-status { width: 132px; } .nbt-head .nbt-c-id { width: 212px; }
.nbt-c-task { width: 140px; } .nbt-c-created { width: 150px; } .nbt-c-waited { width: 70px; }
.nbt-c-dur { width: 110px; text-align: right; } .nbt-c-att { width: 36px; text-align: right; }
.nbt-c-machine { width: 76px; } .nbt-c-queue { width: 140px; } .nbt-c-tags { width: 150px; }
.nbt-ago { color: var(--nbt-fg2); }
.widget-button.nbt-link { background: none; box-shadow: none; color: var(--nbt-link);
  font-family: var(--jp-code-font-family, monospace); text-align: left; padding: 0 4px; }
.widget-button.nbt-link:hover { text-decoration: underline; }
.nbt-dashboard .widget-button.nbt-fit { width: auto; min-width: max-content; }
.nbt-themed .jupyter-button.mod-success, .nbt-themed .jupyter-button.mod-warning {
  color: var(--nbt-fg); }
.nbt-themed .jupyter-button.mod-success {
  background: color-mix(in srgb, var(--nbt-ok) 28%, var(--nbt-bg));
  box-shadow: inset 0 0 0 1px var(--nbt-ok); }
.nbt-themed .jupyter-button.mod-warning {
  background: color-mix(in srgb, var(--nbt-warn) 28%, var(--nbt-bg));
  box-shadow: inset 0 0 0 1px var(--nbt-warn); }
.nbt-detail { border-top: 2px solid var(--nbt-border); margin-top: 8px; padding-top: 4px; }
.nbt-detail pre, .nbt-themed pre.nbt-box { background: var(--nbt-bg2); color: var(--nbt-fg);
  padding: 6px; margin: 2px 0 8px 0; white-space: pre-wrap; line-height: 1.35;
  border: 1px solid var(--nbt-border); }
.nbt-facts { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 4px 0; }
.nbt-fact { color: var(--nbt-fg2); }
.nbt-detail .nbt-table td, .nbt-detail .nbt-table th { line-height: 1.35; }
.nbt-themed .nbt-table th { color: var(--nbt-fg2); }
.nbt-message { color: var(--nbt-error-text); }
.nbt-ok { color: var(--nbt-ok-text); }
.nbt-warn { color: var(--nbt-warn-text); font-weight: 600; }
.nbt-banner { border: 1px solid var(--nbt-warn); border-left-width: 4px; padding: 4px 8px;
  margin: 4px 0; background: color-mix(in srgb, var(--nbt-warn) 12%, var(--nbt-bg)); }
.nbt-empty { padding: 8px; color: var(--nbt-fg2); }
.nbt-log-DEBUG { color: var(--nbt-fg2); }
.nbt-log-WARN, .nbt-log-WARNING { color: var(--nbt-warn-text); }
.nbt-log-ERROR, .nbt-log-FATAL { color: var(--nbt-error-text); }
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
