"""One run in full: payload, output, error and traceback, attempts, logs, metadata, relatives,
and the buttons that act on it (Cancel, Replay with an editable payload, Complete token).

It re-reads its run whenever the feed reports a change to it, so metadata and logs stay live
while the run executes. Buttons act through the public runs/wait APIs and report problems in
the panel instead of raising into a kernel log nobody reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import RunNotFoundError
from .._models import Run
from . import queries
from ._ui import Guard, button, hide, is_hidden, make, message, shared, widgets
from .display import badge, clock_time, duration, error_html, esc, pretty_json, table

if TYPE_CHECKING:
    from .._engine import Engine


def _section(title: str, body: str) -> str:
    return f'<div class="nbt-section"><h4 style="margin:6px 0 2px 0">{title}</h4>{body}</div>'


def run_body_html(run: Run, logs: list[queries.LogLine], now: float) -> str:
    """Everything about a run that is read-only, as one HTML block."""
    took = duration(None if run.duration_ms is None else run.duration_ms / 1000)
    facts = [
        ("task", f"<b>{esc(run.task_id)}</b>" + (" <i>(test)</i>" if run.is_test else "")),
        ("created", clock_time(run.created_at, now)),
        ("started", clock_time(run.started_at, now)),
        ("finished", clock_time(run.finished_at, now)),
        ("duration", took),
        ("machine", esc(run.machine)), ("queue", esc(run.queue)),
        ("concurrency key", esc(run.concurrency_key or "")),
        ("tags", esc(", ".join(run.tags))), ("batch", esc(run.batch_id or "")),
        ("idempotency key", esc(run.idempotency_key or "")),
    ]
    facts_html = '<div class="nbt-facts">' + "".join(
        f"<span><span class='nbt-fact'>{k}</span> {v}</span>" for k, v in facts if v) + "</div>"
    parts = [facts_html, _section("Payload", f"<pre class='nbt-payload'>"
                                             f"{pretty_json(run.payload)}</pre>")]
    if run.error:
        parts.append(_section("Error", error_html(run.error)))
    if run.output is not None or run.status.value == "COMPLETED":
        parts.append(_section("Output", f"<pre class='nbt-output'>{pretty_json(run.output)}</pre>"))
    if run.metadata:
        parts.append(_section("Metadata", f"<pre class='nbt-metadata'>"
                                          f"{pretty_json(run.metadata)}</pre>"))
    if run.attempts:
        rows = [[str(a.number), esc(a.status), esc(a.machine), clock_time(a.started_at, now),
                 duration(None if a.duration_ms is None else a.duration_ms / 1000),
                 esc(f"{a.error.get('type', '')}: {a.error.get('message', '')}") if a.error
                 else ""] for a in run.attempts]
        parts.append(_section("Attempts", table(
            ["#", "status", "machine", "started", "duration", "error"], rows)))
    if logs:
        rows = [[clock_time(line.ts, now), esc(line.level), esc(line.message),
                 esc(json.dumps(line.attributes)) if line.attributes else ""] for line in logs]
        parts.append(_section(f"Logs ({len(logs)})", table(["time", "level", "message", ""], rows)))
    return "".join(parts)


class RunDetail(widgets.VBox):  # type: ignore[misc]
    """The selected run (see the module docstring). `show(run_id)` picks it; None clears it."""

    def __init__(self, engine: Engine, guard: Guard, on_open: Callable[[str], None]) -> None:
        self.engine = engine
        self.run_id: str | None = None
        self.run: Run | None = None
        self._on_open = on_open
        self._guard = guard
        self._link_key: tuple[Any, ...] = ()
        self.header = make(widgets.HTML, "nbt-detail-header")
        self.cancel = button("Cancel run", "nbt-cancel", button_style="warning")
        self.replay = button("Replay…", "nbt-replay")
        self.cancel.on_click(guard(lambda _b: self._cancel()))
        self.replay.on_click(guard(lambda _b: self._toggle_replay()))
        self.replay_payload = make(widgets.Textarea, "nbt-replay-payload", width="520px",
                                   height="120px")
        self.replay_go = button("Replay with this payload", "nbt-replay-go",
                                button_style="primary")
        self.replay_go.on_click(guard(lambda _b: self._replay()))
        box = shared(widgets.Layout)
        self.replay_box = widgets.VBox([self.replay_payload, self.replay_go], layout=box)
        self.token = make(widgets.Dropdown, "nbt-token", width="320px")
        self.token_data = make(widgets.Textarea, "nbt-token-data", width="320px", height="60px",
                               value="{}")
        self.token_go = button("Complete token", "nbt-complete-token", button_style="success")
        self.token_go.on_click(guard(lambda _b: self._complete_token()))
        self.token_box = widgets.HBox([self.token, self.token_data, self.token_go], layout=box)
        self.links = make(widgets.HBox, "nbt-links")
        self.message = make(widgets.HTML, "nbt-detail-message")
        self.body = make(widgets.HTML, "nbt-detail-body")
        super().__init__([self.header, widgets.HBox([self.cancel, self.replay], layout=box),
                          self.replay_box, self.token_box, self.message, self.links, self.body],
                         layout=box)
        self.add_class("nbt-detail")
        self.show(None)

    # ------------------------------------------------------------------ showing

    def show(self, run_id: str | None) -> None:
        """Switch to `run_id` (None: nothing selected). The caller holds the dashboard lock."""
        if run_id != self.run_id:
            self.message.value = ""
            hide(self.replay_box)
        self.run_id = run_id
        hide(self, run_id is None)
        if run_id is not None:
            self.refresh()

    def refresh(self) -> None:
        if self.run_id is None:
            return
        eng = self.engine
        try:
            run = self.run = eng.runs.retrieve(self.run_id)
        except RunNotFoundError:  # pruned, or another store: say so rather than fail each refresh
            self.header.value = f"<h3>run <code>{esc(self.run_id)}</code> is not in the store</h3>"
            self.body.value = ""
            self.run = None
            self.run_id = None
            for part in (self.cancel, self.replay, self.replay_box, self.token_box, self.links):
                hide(part)
            return
        hide(self.replay, False)
        hide(self.links, False)
        now = eng.clock.now()
        self.header.value = (f"<h3 style='margin:4px 0'>{badge(run.status.value)} "
                             f"<code class='nbt-detail-id'>{esc(run.id)}</code></h3>")
        self.cancel.disabled = run.is_completed
        hide(self.cancel, run.is_completed)
        tokens = queries.pending_tokens(eng.store, run.id) if not run.is_completed else []
        if list(self.token.options) != tokens:
            self.token.options = tokens
            self.token.value = tokens[0] if tokens else None
        hide(self.token_box, not tokens)
        self._links(run)
        self.body.value = run_body_html(run, queries.logs(eng.store, run.id), now)

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

    def _cancel(self) -> None:
        assert self.run_id is not None
        done = self.engine.runs.cancel(self.run_id)
        self.message.value = message("cancelled" if done else "the run had already ended",
                                     ok=done)
        self.refresh()

    def _toggle_replay(self) -> None:
        if self.run is None:
            return
        opening = is_hidden(self.replay_box)
        if opening:
            self.replay_payload.value = json.dumps(self.run.payload, indent=2)
        hide(self.replay_box, not opening)

    def _replay(self) -> None:
        assert self.run_id is not None
        try:
            payload = json.loads(self.replay_payload.value or "null")
        except json.JSONDecodeError as exc:
            self.message.value = message(f"payload is not valid JSON: {esc(exc)}")
            return
        original = self.run_id
        handle = self.engine.runs.replay(original, payload)
        hide(self.replay_box)
        self._on_open(handle.id)
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
