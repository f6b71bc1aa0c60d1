"""Rich reprs: readable HTML for runs, results and batches, always with a text/plain fallback."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._handles import Result, RunHandle
    from .._models import Run

_COLOURS = {"COMPLETED": "#1a7f37", "FAILED": "#cf222e", "CRASHED": "#cf222e",
            "SYSTEM_FAILURE": "#cf222e", "TIMED_OUT": "#bc4c00", "CANCELED": "#6e7781",
            "EXPIRED": "#6e7781", "EXECUTING": "#0969da", "WAITING": "#8250df",
            "REATTEMPTING": "#bf8700"}


def badge(status: str) -> str:
    colour = _COLOURS.get(status, "#57606a")
    return (f'<span style="background:{colour};color:white;border-radius:4px;'
            f'padding:1px 6px;font-size:0.85em">{html.escape(status)}</span>')


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return html.escape(text if len(text) <= limit else text[: limit - 1] + "…")


def run_html(run: Run) -> str:
    err = f"<div><b>error</b>: {html.escape(str((run.error or {}).get('message', '')))}</div>" \
        if run.error else ""
    return (f"<div><code>{run.id}</code> {badge(run.status.value)} task <b>"
            f"{html.escape(run.task_id)}</b>, {run.attempt_count} attempt(s)</div>"
            f"<div><b>output</b>: {_short(run.output)}</div>{err}")


def result_html(result: Result[Any]) -> str:
    body = (f"<b>output</b>: {_short(result.output)}" if result.ok
            else f"<b>error</b>: {html.escape(str(result.error))}")
    return (f"<div><code>{result.id}</code> {badge(result.status.value)} "
            f"<b>{html.escape(result.task_id)}</b> {body}</div>")


def batch_html(batch_id: str, results: list[Result[Any]]) -> str:
    rows = "".join(f"<tr><td><code>{r.id}</code></td><td>{badge(r.status.value)}</td>"
                   f"<td>{_short(r.output if r.ok else str(r.error), 80)}</td></tr>"
                   for r in results)
    ok = sum(r.ok for r in results)
    return (f"<div><b>batch</b> <code>{batch_id}</code>: {ok}/{len(results)} ok</div>"
            f"<table><tr><th>run</th><th>status</th><th>output / error</th></tr>{rows}</table>")


def runs_table_html(runs: list[Run]) -> str:
    rows = "".join(
        f"<tr><td><code>{r.id}</code></td><td>{html.escape(r.task_id)}</td>"
        f"<td>{badge(r.status.value)}</td><td>{r.created_at:%Y-%m-%d %H:%M:%S}</td>"
        f"<td>{'' if r.duration_ms is None else f'{r.duration_ms:.0f} ms'}</td>"
        f"<td>{r.attempt_count}</td><td>{html.escape(', '.join(r.tags))}</td></tr>"
        for r in runs)
    return ("<table><tr><th>run</th><th>task</th><th>status</th><th>created</th>"
            f"<th>duration</th><th>attempts</th><th>tags</th></tr>{rows}</table>")


def display_handle(handle: RunHandle[Any]) -> None:
    """A handle as a cell's last value: a live status line where widgets work, text elsewhere."""
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - plain Python has no display
        print(repr(handle))
        return
    try:
        from .status_line import status_line

        display(status_line(handle))
    except ImportError:
        display({"text/plain": repr(handle)}, raw=True)
