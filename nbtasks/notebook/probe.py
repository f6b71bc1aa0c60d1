"""`Probe`: a tiny anywidget that reports whether its part of the page is on screen, and scrolls
that part into view on request.

The kernel cannot otherwise know whether anyone sees a widget. A dashboard in a collapsed
output, a closed tab or a scrolled-away cell should cost nothing, so the dashboard ticks its clock
only while `visible` is True and skips event refreshes while it is False (catching up when it
shows again). `visible` is None until a frontend reports: with no frontend (a script, nbclient,
an exported page) the dashboard keeps refreshing on events as it always did, but never ticks.

The ESM ships in the package (`probe.js`): no CDN, no build step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import anywidget
    import traitlets
except ImportError as exc:  # pragma: no cover - anywidget is a dependency, but may be removed
    raise ImportError("the nbtasks dashboard needs anywidget: pip install anywidget") from exc

_ESM = Path(__file__).with_name("probe.js")


class Probe(anywidget.AnyWidget):
    """Observes the closest ancestor with CSS class `target` (see the module docstring)."""

    _esm = _ESM
    target = traitlets.Unicode("").tag(sync=True)
    visible = traitlets.Bool(None, allow_none=True).tag(sync=True)
    scroll_seq = traitlets.Int(0).tag(sync=True)
    shortcuts = traitlets.Bool(False).tag(sync=True)
    #: Ctrl/Cmd+Enter presses inside the target, counted by the page (with `shortcuts=True`).
    submits = traitlets.Int(0).tag(sync=True)

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target=target, **kwargs)
        self.add_class("nbt-probe")

    def scroll_into_view(self) -> None:
        """Ask every view to scroll its target into view (only as far as needed)."""
        self.scroll_seq += 1
