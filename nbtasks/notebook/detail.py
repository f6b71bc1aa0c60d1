"""One run in full: payload, output, error and traceback, attempts, logs, metadata, relatives,
and the buttons that act on it (Cancel, Replay with edited payload and options, Reschedule or
start a delayed run now, Complete token).

It re-reads its run whenever the feed reports a change to it, so metadata and logs stay live
while the run executes. Buttons act through the public runs/wait APIs and report problems in
the panel instead of raising into a kernel log nobody reads. Each button is disabled while its
action runs and an action that finds its work already done says so calmly: a double click on
Cancel reads "canceled", not an error.

The attempts sit in `trace_slot`, the place where the run trace widget goes; until it is
plugged in (`set_trace_view`), the slot shows the attempts table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import NbtasksError, RunNotFoundError
from .._models import MACHINES, Run
from . import queries
from ._ui import Guard, button, classed, hide, is_hidden, make, message, shared, widgets
from .display import ago, badge, clock_time, duration, error_html, esc, pretty_json, table
from .probe import Probe
from .redact import Redactor
from .status_line import paused_queues

if TYPE_CHECKING:
    from .._engine import Engine

#: Builds the run trace for the detail panel: `(engine, run) -> widget`, or None for the
#: attempts table alone. The widget may offer `refresh()`/`is_live` (re-read while its run is
#: not final) and `on_open(callback)` (a click on a child run opens that run).
TraceView = Callable[[Any, Run], Any]


def _run_trace(engine: Any, run: Run) -> Any:
    from .trace import RunTrace  # the anywidget: only once a run is opened

    return RunTrace(engine, run.id)


_trace_view: TraceView | None = _run_trace


def set_trace_view(build: TraceView | None) -> None:
    """Plug a run trace widget into every run detail's `trace_slot` (None: the attempts table)."""
    global _trace_view
    _trace_view = build


LEVELS = ("DEBUG", "LOG", "INFO", "WARN", "ERROR")


def _section(title: str, body: str) -> str:
    return f'<div class="nbt-section"><h4 style="margin:6px 0 2px 0">{title}</h4>{body}</div>'


def attempt_seconds(attempt: Any, last_alive: float | None) -> tuple[float | None, bool]:
    """An attempt's duration, and whether it is a lower bound.

    An attempt ended by a kernel restart is recorded as finished at its last sign of life (its
    last log line or row write; see nbtasks/_recovery.py), not when the next kernel adopted it:
    the time the kernel was down is not run time. It may have run a little longer unseen, so
    the figure is marked as "at least". Files written before that rule recorded the adoption
    time; their last log line (`last_alive`) still gives the right figure.
    """
    if attempt.started_at is None or attempt.finished_at is None:
        return None, False
    started = attempt.started_at.timestamp()
    if (attempt.error or {}).get("type") == "KernelRestartError":
        end = attempt.finished_at.timestamp() if last_alive is None else last_alive
        return max(0.0, end - started), True
    return attempt.duration_ms / 1000, False


def attempts_html(run: Run, logs: list[queries.LogLine], now: float) -> str:
    rows = []
    for a in run.attempts:
        fin = a.finished_at.timestamp() if a.finished_at is not None else None
        start = a.started_at.timestamp() if a.started_at is not None else None
        # fin is the stored end as a datetime: allow for its rounding to the microsecond
        alive = max((line.ts for line in logs if start is not None and start <= line.ts
                     and (fin is None or line.ts <= fin + 1e-3)), default=None)
        took, at_least = attempt_seconds(a, alive)
        rows.append([str(a.number), esc(a.status), esc(a.machine), clock_time(a.started_at, now),
                     ("≥ " if at_least else "") + esc(duration(took)),
                     esc(f"{a.error.get('type', '')}: {a.error.get('message', '')}")
                     if a.error else ""])
    return _section("Attempts", table(["#", "status", "machine", "started", "duration", "error"],
                                      rows)) if rows else ""


def _attempt_of(run: Run, ts: float) -> str:
    number = ""
    for a in run.attempts:
        if a.started_at is not None and a.started_at.timestamp() <= ts:
            number = str(a.number)
    return number


def logs_html(run: Run, logs: list[queries.LogLine], now: float, level: str = "",
              text: str = "", rules: Redactor | None = None) -> str:
    """Log lines coloured by level, with their attempt and attributes as key=value."""
    want = text.strip().lower()
    rows = []
    for line in logs:
        if level and line.level.upper() != level:
            continue
        attrs = rules.mask("logs", line.attributes) if rules and line.attributes else \
            line.attributes
        pairs = " ".join(f"{esc(k)}={esc(json.dumps(v, default=str))}"
                         for k, v in (attrs or {}).items())
        if want and want not in line.message.lower() and want not in pairs.lower():
            continue
        cls = f"nbt-log-{esc(line.level.upper())}"
        rows.append([clock_time(line.ts, now), _attempt_of(run, line.ts),
                     f'<span class="{cls}">{esc(line.level)}</span>',
                     f'<span class="{cls}">{esc(line.message)}</span>',
                     f'<span class="nbt-ago">{pairs}</span>'])
    if not rows:
        return "<i>no log lines match</i>" if logs else ""
    return table(["time", "att.", "level", "message", "attributes"], rows)


def run_body_html(run: Run, logs: list[queries.LogLine], now: float,
                  rules: Redactor | None = None, paused: bool = False) -> str:
    """Everything about a run that is read-only except attempts and logs, as one HTML block."""
    rules = rules or Redactor()
    took = esc(duration(None if run.duration_ms is None else run.duration_ms / 1000))
    starts = ""
    if run.status.value == "DELAYED" and run.delay_until is not None:
        at = run.delay_until.timestamp()
        starts = f"<b>{clock_time(at, now)}</b> ({ago(at, now)})"
    facts = [
        ("task", f"<b>{esc(run.task_id)}</b>" + (" <i>(test)</i>" if run.is_test else "")),
        ("starts", starts),
        ("created", clock_time(run.created_at, now)),
        ("started", clock_time(run.started_at, now)),
        ("finished", clock_time(run.finished_at, now)),
        ("duration", took),
        ("machine", esc(run.machine)),
        ("queue", esc(run.queue) + (' <span class="nbt-warn nbt-paused">paused</span>'
                                    if paused else "")),
        ("concurrency key", esc(run.concurrency_key or "")),
        ("tags", esc(", ".join(run.tags))), ("batch", esc(run.batch_id or "")),
        ("idempotency key", esc(run.idempotency_key or "")),
    ]
    facts_html = '<div class="nbt-facts">' + "".join(
        f"<span class='nbt-fact-{k.replace(' ', '-')}'><span class='nbt-fact'>{k}</span> {v}"
        "</span>" for k, v in facts if v) + "</div>"
    parts = [facts_html, _section("Payload", f"<pre class='nbt-payload'>"
                                             f"{pretty_json(rules.mask('payload', run.payload))}"
                                             "</pre>")]
    if run.error:
        parts.append(_section("Error", error_html(run.error)))
    if run.output is not None or run.status.value == "COMPLETED":
        parts.append(_section("Output", f"<pre class='nbt-output'>"
                                        f"{pretty_json(rules.mask('output', run.output))}</pre>"))
    if run.metadata:
        parts.append(_section("Metadata", f"<pre class='nbt-metadata'>"
                                          f"{pretty_json(rules.mask('metadata', run.metadata))}"
                                          "</pre>"))
    return "".join(parts)


class RunDetail(widgets.VBox):  # type: ignore[misc]
    """The selected run (see the module docstring). `show(run_id)` picks it; None clears it."""

    def __init__(self, engine: Engine, guard: Guard, on_open: Callable[[str], None], *,
                 read_only: bool = False, rules: Redactor | None = None,
                 on_new_run: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.read_only = read_only
        self.rules = rules or Redactor()
        self.run_id: str | None = None
        self.run: Run | None = None
        self._on_open = on_open
        self._on_new_run = on_new_run or on_open
        self._guard = guard
        self._link_key: tuple[Any, ...] = ()
        self._trace_for: str | None = None
        box = shared(widgets.Layout)
        self.probe = Probe("nbt-detail")
        self.header = make(widgets.HTML, "nbt-detail-header")
        self.cancel = button("Cancel run", "nbt-cancel", "nbt-fit", button_style="warning")
        self.replay = button("Replay…", "nbt-replay", "nbt-fit")
        self.start_now = button("Start now", "nbt-start-now", "nbt-fit", button_style="primary")
        self.delay = make(widgets.Text, "nbt-reschedule-delay", width="140px",
                          placeholder="e.g. 10m, 1h")
        self.reschedule = button("Reschedule", "nbt-reschedule", "nbt-fit")
        self.cancel.on_click(guard(lambda _b: self._busy(self.cancel, self._cancel)))
        self.replay.on_click(guard(lambda _b: self._toggle_replay()))
        self.start_now.on_click(guard(lambda _b: self._busy(self.start_now,
                                                            lambda: self._reschedule(0))))
        self.reschedule.on_click(guard(lambda _b: self._busy(
            self.reschedule, lambda: self._reschedule(self.delay.value.strip()))))
        self.delayed_box = classed(widgets.HBox([self.start_now, self.delay, self.reschedule],
                                                layout=box), "nbt-delayed-actions")
        # the replay dialog: payload and the options a replay may change
        wide = "520px"
        self.replay_payload = make(widgets.Textarea, "nbt-replay-payload", width=wide,
                                   height="120px", description="payload")
        self.replay_metadata = make(widgets.Textarea, "nbt-replay-metadata", width=wide,
                                    height="60px", description="metadata", placeholder="{}")
        self.replay_tags = make(widgets.Text, "nbt-replay-tags", width=wide, description="tags",
                                placeholder="comma, separated")
        self.replay_machine = make(widgets.Dropdown, "nbt-replay-machine", width=wide,
                                   description="machine", options=[("same as the run", ""),
                                                                   *((m, m) for m in MACHINES)],
                                   value="")
        self.replay_queue = make(widgets.Text, "nbt-replay-queue", width=wide,
                                 description="queue", placeholder="same as the run")
        self.replay_delay = make(widgets.Text, "nbt-replay-delay", width=wide,
                                 description="delay", placeholder="none; e.g. 30s, 5m")
        self.replay_go = button("Replay with this payload", "nbt-replay-go", "nbt-fit",
                                button_style="primary")
        self.replay_go.on_click(guard(lambda _b: self._busy(self.replay_go, self._replay)))
        self.replay_box = classed(widgets.VBox(
            [self.replay_payload, self.replay_metadata, self.replay_tags, self.replay_machine,
             self.replay_queue, self.replay_delay, self.replay_go], layout=box), "nbt-replay-box")
        self.token = make(widgets.Dropdown, "nbt-token", width="320px")
        self.token_data = make(widgets.Textarea, "nbt-token-data", width="320px", height="60px",
                               value="{}")
        self.token_go = button("Complete token", "nbt-complete-token", "nbt-fit",
                               button_style="success")
        self.token_go.on_click(guard(lambda _b: self._busy(self.token_go, self._complete_token)))
        self.token_box = widgets.HBox([self.token, self.token_data, self.token_go], layout=box)
        self.actions = classed(widgets.HBox([self.cancel, self.replay], layout=box),
                               "nbt-detail-actions")
        self.links = make(widgets.HBox, "nbt-links")
        self.message = make(widgets.HTML, "nbt-detail-message")
        self.body = make(widgets.HTML, "nbt-detail-body")
        #: Where the run trace goes (see `set_trace_view`); the attempts table until then.
        self.attempts = make(widgets.HTML, "nbt-attempts")
        self.trace_slot = make(widgets.VBox, "nbt-trace-slot", children=[self.attempts])
        self.log_level = make(widgets.Dropdown, "nbt-log-level", width="120px",
                              options=[("all levels", ""), *((lv, lv) for lv in LEVELS)],
                              value="")
        self.log_text = make(widgets.Text, "nbt-log-text", width="220px",
                             placeholder="filter log lines", continuous_update=True)
        self.logs_title = make(widgets.HTML, "nbt-logs-title")
        self.logs = make(widgets.HTML, "nbt-logs")
        for w in (self.log_level, self.log_text):
            w.observe(guard(lambda _c: self._show_logs()), "value")
        self._log_lines: list[queries.LogLine] = []
        self.log_box = classed(widgets.VBox([
            widgets.HBox([self.logs_title, self.log_level, self.log_text], layout=box),
            self.logs], layout=box), "nbt-log-box")
        parts = [self.probe, self.header]
        if not read_only:
            parts += [self.actions, self.delayed_box, self.replay_box, self.token_box]
        parts += [self.message, self.links, self.body, self.trace_slot, self.log_box]
        super().__init__(parts, layout=box)
        self.add_class("nbt-detail")
        self.show(None)

    # ------------------------------------------------------------------ showing

    def show(self, run_id: str | None, scroll: bool = False) -> None:
        """Switch to `run_id` (None: nothing selected). The caller holds the dashboard lock."""
        if run_id != self.run_id:
            self.message.value = ""
            hide(self.replay_box)
            self.log_text.value = ""
            self.log_level.value = ""
        self.run_id = run_id
        hide(self, run_id is None)
        if run_id is not None:
            self.refresh()
            if scroll:
                self.probe.scroll_into_view()

    def refresh(self) -> None:
        if self.run_id is None:
            return
        eng = self.engine
        try:
            run = self.run = eng.runs.retrieve(self.run_id)
        except RunNotFoundError:  # pruned, or another store: say so rather than fail each refresh
            self.header.value = f"<h3>run <code>{esc(self.run_id)}</code> is not in the store</h3>"
            self.body.value = self.attempts.value = self.logs.value = ""
            self.run = None
            self.run_id = None
            for part in (self.actions, self.delayed_box, self.replay_box, self.token_box,
                         self.links):
                hide(part)
            return
        hide(self.actions, False)
        hide(self.links, False)
        now = eng.clock.now()
        self.header.value = (f"<h3 style='margin:4px 0'>{badge(run.status.value)} "
                             f"<code class='nbt-detail-id'>{esc(run.id)}</code></h3>")
        self.cancel.disabled = run.is_completed
        hide(self.cancel, run.is_completed)
        hide(self.delayed_box, run.status.value != "DELAYED")
        tokens = queries.pending_tokens(eng.store, run.id) if not run.is_completed else []
        if list(self.token.options) != tokens:
            self.token.options = tokens
            self.token.value = tokens[0] if tokens else None
        hide(self.token_box, not tokens)
        self._links(run)
        paused = run.is_queued and run.queue in paused_queues(eng)
        self._log_lines = queries.logs(eng.store, run.id)
        self.body.value = run_body_html(run, self._log_lines, now, self.rules, paused)
        self._trace(run, now)
        self._show_logs()

    def _trace(self, run: Run, now: float) -> None:
        """The attempts table, then the run trace under it (one widget per run opened)."""
        self.attempts.value = attempts_html(run, self._log_lines, now)
        if _trace_view is None:
            return
        if self._trace_for != run.id:
            self._trace_for = run.id
            for old in self.trace_slot.children:
                if old is not self.attempts:
                    old.close()
            view = _trace_view(self.engine, run)
            if hasattr(view, "on_open"):
                view.on_open(self._guard(lambda target: self._open_from_trace(target)))
            self.trace_slot.children = [self.attempts, view]
            return
        for view in self.trace_slot.children:  # the same run changed: a live trace re-reads
            if view is not self.attempts and getattr(view, "is_live", False):
                view.refresh()

    def _open_from_trace(self, target: dict[str, Any]) -> None:
        other = target.get("run")
        if isinstance(other, str) and other != self.run_id:
            self._on_open(other)

    def _show_logs(self) -> None:
        if self.run is None:
            return
        lines = self._log_lines
        self.logs_title.value = f"<h4 style='margin:6px 8px 2px 0'>Logs ({len(lines)})</h4>"
        self.logs.value = logs_html(self.run, lines, self.engine.clock.now(),
                                    self.log_level.value, self.log_text.value, self.rules)
        hide(self.log_box, not lines)

    def _links(self, run: Run) -> None:
        kids, total = queries.children(self.engine.store, run.id)
        wanted = ([("parent", run.parent_id)] if run.parent_id else []) + [
            ("child", cid) for cid, _task, _status in kids]
        key = (*wanted, total)
        if key == self._link_key:
            return
        self._link_key = key
        buttons: list[Any] = [make(widgets.HTML, value="<b>parent / children:</b>&nbsp;")
                              ] if wanted else []
        for kind, rid in wanted:
            b = button(rid, "nbt-link", f"nbt-{kind}-link", width="240px", tooltip=kind)
            b.on_click(self._guard(lambda _b, rid=rid: self._on_open(rid)))
            buttons.append(b)
        if total > len(kids):
            buttons.append(make(widgets.HTML, value=f"… and {total - len(kids)} more children"))
        for old in self.links.children:
            old.close()
        self.links.children = buttons

    # ------------------------------------------------------------------ actions

    def _busy(self, which: Any, action: Callable[[], None]) -> None:
        """Run `action` with its button disabled, so a second click can't start it twice."""
        if self.read_only:  # the buttons are not shown; a crafted message must not act either
            self.message.value = message("this dashboard is read-only")
            return
        if which.disabled:
            return
        which.disabled = True
        try:
            action()
        finally:
            which.disabled = False
            if self.run is not None:
                self.cancel.disabled = self.run.is_completed

    def _cancel(self) -> None:
        assert self.run_id is not None
        done = self.engine.runs.cancel(self.run_id)
        self.engine.runs._fresh()
        self.refresh()
        status = self.run.status.value if self.run is not None else ""
        if done or status == "CANCELED":  # a second click finds it canceled: that's success
            self.message.value = message("canceled", ok=True)
        else:
            self.message.value = message(f"the run had already ended ({esc(status)})")

    def _reschedule(self, delay: Any) -> None:
        assert self.run_id is not None
        if delay == "":
            self.message.value = message("type a delay first, like 10m or 1h")
            return
        run = self.engine.runs.reschedule(self.run_id, delay)
        when = run.delay_until.timestamp() if run.delay_until is not None else None
        self.refresh()
        self.message.value = message(
            "starting now" if delay == 0 else
            f"rescheduled to {clock_time(when, self.engine.clock.now())}", ok=True)

    def _toggle_replay(self) -> None:
        if self.run is None or self.read_only:
            return
        opening = is_hidden(self.replay_box)
        if opening:
            run = self.run
            self.replay_payload.value = json.dumps(self.rules.mask("payload", run.payload),
                                                   indent=2, ensure_ascii=False)
            self.replay_metadata.value = ""
            self.replay_tags.value = ", ".join(run.tags)
            self.replay_machine.value = ""
            self.replay_queue.value = ""
            self.replay_delay.value = ""
        hide(self.replay_box, not opening)

    def replay_options(self) -> dict[str, Any]:
        """The dialog's options for `runs.replay` (only what was changed)."""
        assert self.run is not None
        opts: dict[str, Any] = {}
        meta = self.replay_metadata.value.strip()
        if meta:
            try:
                opts["metadata"] = json.loads(meta)
            except json.JSONDecodeError as exc:
                raise _Invalid(f"metadata is not valid JSON: {esc(exc)}") from None
        tags = [t.strip() for t in self.replay_tags.value.split(",") if t.strip()]
        if tags != list(self.run.tags):
            opts["tags"] = tags
        if self.replay_machine.value:
            opts["machine"] = self.replay_machine.value
        if self.replay_queue.value.strip():
            opts["queue"] = self.replay_queue.value.strip()
        delay = self.replay_delay.value.strip()
        if delay:
            opts["delay"] = float(delay) if delay.replace(".", "", 1).isdigit() else delay
        return opts

    def _replay(self) -> None:
        assert self.run_id is not None and self.run is not None
        try:
            payload = json.loads(self.replay_payload.value or "null")
        except json.JSONDecodeError as exc:
            self.message.value = message(f"payload is not valid JSON: {esc(exc)}")
            return
        try:
            options = self.replay_options()
        except _Invalid as exc:
            self.message.value = message(str(exc))
            return
        payload = self.rules.restore("payload", payload, self.run.payload)
        original = self.run_id
        try:
            handle = self.engine.runs.replay(original, payload, **options)
        except NbtasksError as exc:
            self.message.value = message(esc(exc))
            return
        hide(self.replay_box)
        self._on_new_run(handle.id)
        self.message.value = message(f"started as a replay of {esc(original)}", ok=True)

    def _complete_token(self) -> None:
        token = self.token.value
        if not token:
            return
        try:
            data = json.loads(self.token_data.value or "null")
        except json.JSONDecodeError as exc:
            self.message.value = message(f"token data is not valid JSON: {esc(exc)}")
            return
        done = self.engine.wait.complete_token(token, data)
        self.message.value = message(f"token {esc(token)} completed" if done
                                     else f"token {esc(token)} was already settled", ok=done)
        self.engine.runs._fresh()
        self.refresh()


class _Invalid(ValueError):
    """A replay dialog field that can't be used; its message is shown in the panel."""

