"""Queues: running and queued counts, limits in words, busy concurrency keys, pause/resume of
one queue or of every queue at once, and a limit override (`queues.set_limit`) per queue.

An override, like a pause, is the engine's runtime state: it holds until Reset or until the kernel
restarts, when the limit the code defines applies again. The row says so next to the field.

The numbers come from the dispatcher's own snapshot (`queues.list()`, taken on the engine loop),
since queue occupancy is live state that the store does not hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from ._ui import Guard, button, hide, make, message, shared, widgets
from .display import esc

if TYPE_CHECKING:
    from .._engine import Engine


def limit_words(per_key: int | None, total: int | None, keyed: bool) -> str:
    """A queue's limits in words.

    >>> limit_words(None, None, False), limit_words(2, None, False), limit_words(1, 5, True)
    ('no limit', 'at most 2 at once', 'at most 1 at once per concurrency key, 5 in all')
    """
    parts = []
    if per_key is not None:
        parts.append(f"at most {per_key} at once" + (" per concurrency key" if keyed else ""))
    if total is not None:
        parts.append(f"{total} in all" if parts else f"at most {total} at once in all")
    return ", ".join(parts) or "no limit"


def parse_limit(text: str) -> int | str | None:
    """What the limit field holds: a number, "none" for no limit, or the text itself (which
    `queues.set_limit` then refuses with a message naming the queue and the value).

    >>> parse_limit(" 4 "), parse_limit("none"), parse_limit("no limit"), parse_limit("-1")
    (4, None, None, -1)
    >>> parse_limit("lots")
    'lots'
    """
    text = text.strip()
    if text.lower() in ("none", "no limit", "unlimited"):
        return None
    try:
        return int(text)
    except ValueError:
        return text


class QueueRow(widgets.HBox):  # type: ignore[misc]
    def __init__(self, engine: Engine, guard: Guard, name: str, after: Any,
                 read_only: bool = False) -> None:
        self.engine = engine
        self.name = name
        self.read_only = read_only
        self.paused = False
        self.text = make(widgets.HTML, "nbt-queue-text", width="620px")
        self.toggle = button("Pause", "nbt-queue-toggle", "nbt-fit")
        self.toggle.on_click(guard(lambda _b: self._toggle(after)))
        self.limit = make(widgets.Text, "nbt-queue-limit", width="80px",
                          placeholder="limit", continuous_update=False)
        self.set = button("Set limit", "nbt-queue-set", "nbt-fit",
                          tooltip="override the limit until Reset or a kernel restart")
        self.reset = button("Reset", "nbt-queue-reset", "nbt-fit", "nbt-hidden",
                            tooltip="back to the limit the code defines")
        self.note = make(widgets.HTML, "nbt-queue-note")
        self.set.on_click(guard(lambda _b: self._set_limit(after)))
        self.reset.on_click(guard(lambda _b: self._reset_limit(after)))
        # the note goes under the text, so a message never squeezes the buttons
        left = make(widgets.VBox, children=[self.text, self.note])
        controls = [self.toggle, self.limit, self.set, self.reset]
        super().__init__([self.text] if read_only else [left, *controls],
                         layout=shared(widgets.Layout))
        self.add_class("nbt-queue")

    def show(self, q: dict[str, Any]) -> None:
        self.paused = bool(q["paused"])
        keys = ", ".join(f"{esc(k)}: {v['running']} running, {v['queued']} queued"
                         for k, v in list(q["keys"].items())[:5])
        more = f" … +{len(q['keys']) - 5} keys" if len(q["keys"]) > 5 else ""
        state = ' <span class="nbt-warn nbt-paused">PAUSED</span>' if self.paused else ""
        keyed = any(q["keys"])
        words = limit_words(q["concurrency_limit"], q["total"], keyed)
        if q.get("overridden"):
            words = (f"<span class='nbt-warn nbt-overridden'>{words}</span> (set here until "
                     f"Reset or a kernel restart; the code says "
                     f"{limit_words(q.get('defined_limit'), q['total'], keyed)})")
        self.text.value = (
            f"<code>{esc(q['name'])}</code>{state}: <b>{q['running']}</b> running, "
            f"<b>{q['queued']}</b> queued · {words}"
            + (f"<br><span class='nbt-ago' style='font-size:0.85em'>{keys}{more}</span>"
               if keys else ""))
        self.toggle.description = "Resume" if self.paused else "Pause"
        hide(self.reset, not q.get("overridden"))

    def _set_limit(self, after: Any) -> None:
        if self.read_only:
            return
        if not self.limit.value.strip():
            self.note.value = message("type a limit (a whole number, 0 holds every run) "
                                      "or <code>none</code>")
            return
        value = parse_limit(self.limit.value)
        try:
            self.engine.queues.set_limit(self.name, value)  # type: ignore[arg-type]
        except ConfigurationError as exc:  # said in the row, the override unchanged
            self.note.value = message(esc(exc))
            return
        self.limit.value = ""
        self.note.value = message(
            f"limit set: {esc(limit_words(value, None, False))}"  # type: ignore[arg-type]
            " until Reset or a kernel restart", ok=True)
        after()

    def _reset_limit(self, after: Any) -> None:
        if self.read_only:
            return
        q = self.engine.queues.reset_limit(self.name)
        self.note.value = message(
            f"back to the defined limit: {esc(limit_words(q['concurrency_limit'], None, False))}",
            ok=True)
        after()

    def _toggle(self, after: Any) -> None:
        if self.read_only:
            return
        (self.engine.queues.resume if self.paused else self.engine.queues.pause)(self.name)
        after()


class QueuesPanel(widgets.VBox):  # type: ignore[misc]
    """One row per queue the engine knows, created as queues appear and refilled in place."""

    def __init__(self, engine: Engine, guard: Guard, read_only: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self._guard = guard
        self._rows: dict[str, QueueRow] = {}
        self.empty = make(widgets.HTML,
                          value="<i>no queues yet: a queue appears when its first run does</i>")
        self.pause_all = button("Pause all", "nbt-queues-pause-all", "nbt-fit")
        # neutral, not "success": white on JupyterLab's light green is below AA contrast
        self.resume_all = button("Resume all", "nbt-queues-resume-all", "nbt-fit")
        self.pause_all.on_click(guard(lambda _b: self._all(pause=True)))
        self.resume_all.on_click(guard(lambda _b: self._all(pause=False)))
        self.list = make(widgets.VBox, children=[self.empty])
        top = [] if read_only else [widgets.HBox([self.pause_all, self.resume_all],
                                                 layout=shared(widgets.Layout))]
        super().__init__([*top, self.list], layout=shared(widgets.Layout))
        self.add_class("nbt-queues")

    def _all(self, pause: bool) -> None:
        """Pause (or resume) every queue the engine knows; running runs finish either way."""
        if self.read_only:
            return
        api = self.engine.queues
        for q in api.list():
            if bool(q["paused"]) != pause:
                (api.pause if pause else api.resume)(q["name"])
        self.refresh()

    def refresh(self) -> None:
        snapshot = sorted(self.engine.queues.list(), key=lambda q: q["name"])
        for q in snapshot:
            row = self._rows.get(q["name"])
            if row is None:
                row = self._rows[q["name"]] = QueueRow(self.engine, self._guard, q["name"],
                                                       self.refresh, self.read_only)
            row.show(q)
        names = [q["name"] for q in snapshot]
        children = [self._rows[n] for n in names] or [self.empty]
        if list(self.list.children) != children:
            self.list.children = children
