"""`restart_note()`: an invisible anywidget inside every nbtasks widget that, once the kernel
restarts, turns the widget's output into one line: "kernel restarted: run the cell again".

After a restart JupyterLab and Notebook 7 keep the old widgets on the page, looking alive but
connected to nothing. One shared model serves every widget (each shows its own view of it), so
the note costs no extra comm per status line. The ESM ships in the package (`restart_note.js`,
after `static/restart.js`, which the run trace and the timeline use in their own views).
"""

from __future__ import annotations

from pathlib import Path

from ._ui import shared, widgets

try:
    import anywidget
except ImportError as exc:  # pragma: no cover - anywidget is a dependency, but may be removed
    raise ImportError("nbtasks widgets need anywidget: pip install anywidget") from exc

_HERE = Path(__file__).parent
#: The watch (shared with the trace and the timeline), then the note's own view.
_ESM = "\n".join((_HERE / name).read_text(encoding="utf-8")
                  for name in ("static/restart.js", "restart_note.js"))


class RestartNote(anywidget.AnyWidget):
    _esm = _ESM

    @classmethod
    def own(cls) -> RestartNote:
        """A note of one's own, for a widget that closes its whole tree (the dashboard)."""
        return cls(layout=shared(widgets.Layout, display="none"))


def restart_note() -> RestartNote:
    """The kernel's one note model (made again if it was closed)."""
    note: RestartNote = shared(RestartNote, layout=shared(widgets.Layout, display="none"))
    return note
