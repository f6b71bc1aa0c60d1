"""Rich reprs: readable HTML for runs, results and batches, always with a text/plain fallback.

Nothing here imports ipywidgets: the HTML helpers serve `_repr_html_` in any frontend (and the
dashboard's own cells), and `display_handle`/`display_run` reach for a live widget only inside a
kernel that can show one. In a terminal or a script a handle prints as its plain repr.
"""

from __future__ import annotations

import html
import json
import os
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._engine import Engine
    from .._handles import BatchHandle, Result, RunHandle
    from .._models import Run

#: Status colours, GitHub's palette: green done, red failed, blue running, grey ended early.
#: Badges are white text on these in every theme, so each is dark enough for 4.5:1 against
#: white (WCAG AA) with a margin: GitHub's amber (#bf8700) is 3.1:1, hence the darker one.
COLOURS = {"COMPLETED": "#1a7f37", "FAILED": "#cf222e", "CRASHED": "#cf222e",
           "SYSTEM_FAILURE": "#cf222e", "INTERRUPTED": "#cf222e", "TIMED_OUT": "#bc4c00",
           "CANCELED": "#656d76", "EXPIRED": "#656d76", "EXECUTING": "#0969da",
           "WAITING": "#8250df", "REATTEMPTING": "#8a5e00", "QUEUED": "#57606a",
           "DELAYED": "#57606a", "WAITING_FOR_DEPLOY": "#8a5e00"}


def badge(status: str) -> str:
    """A coloured status pill; inline styles, so it also renders in exported HTML."""
    colour = COLOURS.get(status, "#57606a")
    return (f'<span class="nbt-badge nbt-s-{html.escape(status)}" style="background:{colour};'
            'color:white;border-radius:4px;padding:1px 6px;font-size:0.85em;'
            f'white-space:nowrap">{html.escape(status)}</span>')


def esc(value: object) -> str:
    return html.escape(str(value))


def short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return html.escape(text if len(text) <= limit else text[: limit - 1] + "…")


def pretty_json(value: Any, limit: int = 20_000) -> str:
    """JSON for a <pre> block, cut at `limit` characters (a huge output must not stall the page)."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
    return html.escape(text)


def clock_time(ts: float | datetime | None, now: float | None = None) -> str:
    """Local wall time; the date only when it is not today."""
    if ts is None:
        return ""
    when = ts.astimezone() if isinstance(ts, datetime) else datetime.fromtimestamp(ts).astimezone()
    today = datetime.fromtimestamp(now).astimezone().date() if now is not None else None
    return when.strftime("%H:%M:%S" if when.date() == today else "%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 0.0005:  # "0 ms" reads as "did not run"; a 0.26 ms run did
        return "<1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def ago(ts: float | None, now: float) -> str:
    """A relative time: "just now", "42 s ago", "3 min ago", "2 h ago", "in 5 min".

    >>> ago(100.0, 280.0), ago(100.0, 100.4), ago(400.0, 100.0)
    ('3 min ago', 'just now', 'in 5 min')
    """
    if ts is None:
        return ""
    delta = now - ts
    ahead = delta < 0
    delta = abs(delta)
    if delta < 1:
        return "just now" if not ahead else "in <1 s"
    if delta < 60:
        text = f"{delta:.0f} s"
    elif delta < 3600:
        text = f"{delta // 60:.0f} min"
    elif delta < 86400:
        text = f"{delta // 3600:.0f} h"
    else:
        text = f"{delta // 86400:.0f} d"
    return f"in {text}" if ahead else f"{text} ago"


_TABLE = ('<table class="nbt-table" style="border-collapse:collapse;font-size:0.9em">'
          '<thead><tr>{}</tr></thead><tbody>{}</tbody></table>')


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain HTML table; cells are trusted HTML (escape values before passing them)."""
    head = "".join(f'<th style="text-align:left;padding:2px 8px">{h}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f'<td style="padding:2px 8px;vertical-align:top">{c}</td>'
                                    for c in r) + "</tr>" for r in rows)
    return _TABLE.format(head, body)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_traceback(tb: str) -> str:
    """A traceback without the frames of nbtasks' own machinery (the run's code starts below it).

    >>> print(user_traceback(f'''Traceback (most recent call last):
    ...   File "{_PACKAGE}_lifecycle.py", line 1, in _run
    ...     output = await call_hook()
    ...   File "/home/me/job.py", line 8, in etl
    ...     raise ValueError("boom")
    ... ValueError: boom'''))
    Traceback (most recent call last):
      [1 nbtasks frame hidden]
      File "/home/me/job.py", line 8, in etl
        raise ValueError("boom")
    ValueError: boom
    """
    out: list[str] = []
    hidden = 0
    skipping = False
    for line in tb.splitlines():
        if line.startswith('  File "'):
            skipping = line[8:].startswith(_PACKAGE)
            if skipping:
                hidden += 1
                continue
        elif skipping and line.startswith("    "):
            continue
        else:
            skipping = False
        if hidden:
            out.append(f"  [{hidden} nbtasks frame{'s' if hidden > 1 else ''} hidden]")
            hidden = 0
        out.append(line)
    return "\n".join(out)


def cell_labels() -> dict[str, str]:
    """This kernel's cell files and their labels: `/tmp/ipykernel_1/ab12.py` -> `In[3]`.

    IPython compiles each cell to a file with a hashed name and keeps the map that lets its own
    tracebacks say `Cell In[3], line 22`; a run's stored traceback names the file, so the
    dashboard reads the same map. Empty outside IPython.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return {}
    shell = get_ipython()
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    return {name: f"In[{n}]" for name, n in names.items()} if isinstance(names, dict) else {}


_FILE_LINE = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+)(?P<rest>.*)$')


def label_cells(tb: str, labels: dict[str, str] | None = None) -> str:
    """Name cell files as IPython does.

    >>> cell = "/tmp/ipykernel_7/1f2e.py"
    >>> label_cells(f'  File "{cell}", line 22, in etl', {cell: "In[1]"})
    '  Cell In[1], line 22, in etl'
    """
    labels = cell_labels() if labels is None else labels
    if not labels:
        return tb
    out = []
    for line in tb.splitlines():
        m = _FILE_LINE.match(line)
        label = labels.get(m.group("file")) if m else None
        out.append(f"  Cell {label}, line {m.group('line')}{m.group('rest')}" if m and label
                   else line)
    return "\n".join(out)


def error_html(error: dict[str, Any] | None) -> str:
    """An error record (type, message, traceback) as a heading and a scrollable traceback."""
    if not error:
        return ""
    head = f"<b>{esc(error.get('type', 'Error'))}</b>: {esc(error.get('message', ''))}"
    tb = label_cells(user_traceback(error.get("traceback") or ""))
    pre = (f'<pre class="nbt-traceback" style="max-height:18em;overflow:auto;font-size:0.85em">'
           f"{esc(tb)}</pre>") if tb else ""
    return f'<div class="nbt-error">{head}{pre}</div>'


def run_html(run: Run) -> str:
    err = f"<div><b>error</b>: {esc((run.error or {}).get('message', ''))}</div>" if run.error \
        else ""
    return (f"<div><code>{esc(run.id)}</code> {badge(run.status.value)} task <b>"
            f"{esc(run.task_id)}</b>, {run.attempt_count} attempt(s), "
            f"{esc(duration(None if run.duration_ms is None else run.duration_ms / 1000))}</div>"
            f"<div><b>output</b>: {short(run.output)}</div>{err}")


def result_html(result: Result[Any]) -> str:
    body = (f"<b>output</b>: {short(result.output)}" if result.ok
            else f"<b>error</b>: {esc(result.error)}")
    return (f"<div><code>{esc(result.id)}</code> {badge(result.status.value)} "
            f"<b>{esc(result.task_id)}</b> {body}</div>")


def batch_html(batch_id: str, results: list[Result[Any]], limit: int = 50) -> str:
    rows = [[f"<code>{esc(r.id)}</code>", badge(r.status.value),
             short(r.output if r.ok else str(r.error), 80)] for r in results[:limit]]
    ok = sum(r.ok for r in results)
    more = f"<div>… and {len(results) - limit} more</div>" if len(results) > limit else ""
    return (f"<div><code>{esc(batch_id)}</code>: {ok}/{len(results)} ok</div>"
            + table(["run", "status", "output / error"], rows) + more)


def counts_html(counts: dict[str, int]) -> str:
    """`3 COMPLETED  1 FAILED` with badges, most common first."""
    parts = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{n:,}&nbsp;{badge(s)}" for s, n in parts) or "no runs yet"


def batch_handle_html(batch: BatchHandle[Any], limit: int = 50) -> str:
    """A batch still running: status counts now, and its first runs."""
    from .queries import statuses

    eng: Engine = batch._engine
    eng.runs._fresh()
    ids = [h.id for h in batch.runs]
    status = statuses(eng.store, ids)
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    rows = [[f"<code>{esc(i)}</code>", badge(status.get(i, "?"))] for i in ids[:limit]]
    more = f"<div>… and {len(ids) - limit} more</div>" if len(ids) > limit else ""
    return (f"<div><code>{esc(batch.id)}</code>, {len(ids)} runs: "
            f"{counts_html(counts)}</div>" + table(["run", "status"], rows) + more)


def runs_table_html(runs: list[Run]) -> str:
    rows = [[f"<code>{esc(r.id)}</code>", esc(r.task_id), badge(r.status.value),
             clock_time(r.created_at),
             esc(duration(None if r.duration_ms is None else r.duration_ms / 1000)),
             str(r.attempt_count), esc(", ".join(r.tags))] for r in runs]
    if not rows:
        return "<div>no runs</div>"
    return table(["run", "task", "status", "created", "duration", "attempts", "tags"], rows)


def under_voila() -> bool:
    """True in a kernel Voila started (it sets these variables for the page's kernel).

    A page served by Voila is shared with whoever opens it, so its widgets start read-only.
    """
    env = os.environ
    return env.get("SERVER_SOFTWARE", "").startswith("voila") or any(
        k in env for k in ("VOILA_REQUEST_URL", "VOILA_BASE_URL", "VOILA_APP_PORT"))


def in_widget_kernel() -> bool:
    """True inside a Jupyter kernel (where a frontend can render widgets), not a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(obj: object, raw: bool = False) -> None:
    """IPython's display(), typed; plain Python prints the repr instead."""
    try:
        from IPython.display import display
    except ImportError:  # plain Python has no display machinery
        print(repr(obj))
        return
    display(obj, raw=raw)  # type: ignore[no-untyped-call]


def _show_text(obj: object, html_text: str | None = None) -> None:
    bundle = {"text/plain": repr(obj)}
    if html_text is not None:
        bundle["text/html"] = html_text
    show(bundle, raw=True)


def display_handle(handle: RunHandle[Any]) -> None:
    """A handle as a cell's last value: a live status line where widgets work, text elsewhere."""
    if not in_widget_kernel():
        _show_text(handle)
        return
    from .status_line import StatusLine

    show(StatusLine(handle._engine, handle.id, handle.task_id))


def display_batch(batch: BatchHandle[Any]) -> None:
    """A batch handle as a cell's last value: live counts per status where widgets work."""
    if not in_widget_kernel():
        _show_text(batch, batch_handle_html(batch))
        return
    from .status_line import BatchProgress

    show(BatchProgress(batch._engine, batch.id, [h.id for h in batch.runs], counts=True))


def display_run(run: Run) -> None:
    """A Run snapshot: live while the run is still going in an engine of this kernel."""
    engine = None if run.is_completed else _engine_of(run.id)
    if engine is None or not in_widget_kernel():
        _show_text(run, run_html(run))
        return
    from .status_line import StatusLine

    show(StatusLine(engine, run.id, run.task_id))


def _engine_of(run_id: str) -> Engine | None:
    from .._engine import OPEN_ENGINES

    for eng in list(OPEN_ENGINES):
        if not eng.closed and eng.drives(run_id):
            return eng
    return None
