"""The run trace's data: one run's whole life on one time axis, as plain JSON for the widget.

>>> trace = build_trace(engine.store, run_id, engine.clock.now())        # doctest: +SKIP
>>> [(r["kind"], r["label"]) for r in trace["rows"]]
[('run', 'etl'), ('queued', 'queued'), ('attempt', 'attempt 1'), ('span', 'load'), ...]

Rows, in the order they are drawn (depth is the indent):

- `run` (depth 0): created to finished, or to now while it is going;
- `delayed` and `queued` (1): waiting for its delay, then for a slot;
- `attempt` (1), each with its status and error; under it (2+) the attempt's `span`s (nested by
  parent), its `wait`s (a duration or a date: from the call to the target), the wait `token`s it
  waited on, and its `child` runs (clicking one opens it), each of these under the innermost
  span open when it began;
- `backoff` (1): the gap before the next attempt, with "next retry at".

Log lines are `marks` at their time; `errors` holds the traceback of every failed attempt, not
only the last. Nothing here imports ipywidgets: the model is tested on its own.

Times are epoch seconds from the engine's clock; `end` None means "still going" and is drawn up
to the widget's own ticking "now". The widget formats times in the viewer's local time.
"""

from __future__ import annotations

from typing import Any

from .._errors import RunNotFoundError
from .._payload import loads
from .._runstate import RUN_COLUMNS
from .._spans import SPAN_LEVEL
from .._status import FINAL, RunStatus
from ..stores import Store

#: Enough for any run a person reads; beyond it the trace says how many it left out.
MAX_SPANS = 1500
MAX_CHILDREN = 300
MAX_MARKS = 500
_FINAL = {s.value for s in FINAL}


def _row(key: str, kind: str, label: str, depth: int, start: float, end: float | None,
         status: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "kind": kind, "label": label, "depth": depth, "start": start,
            "end": end, "status": status, "open": None, "span": None, "attempt": None,
            "detail": {}, **extra}


def _attempt_of(ts: float, attempts: list[dict[str, Any]]) -> int | None:
    """The attempt that was running (or the last one started) at `ts`."""
    number = None
    for a in attempts:
        if a["started_at"] is not None and a["started_at"] <= ts:
            number = a["number"]
    return number


def _spans(store: Store, run_id: str) -> tuple[list[dict[str, Any]], int]:
    _, rows = store.select(
        "SELECT message, attributes FROM logs WHERE run_id = ? AND level = ? ORDER BY ts, rowid",
        (run_id, SPAN_LEVEL))
    last: dict[str, dict[str, Any]] = {}
    for name, attrs in rows:  # an opening line, then a closing one: the last wins
        a = loads(attrs) or {}
        if "span_id" in a:
            last[a["span_id"]] = {**a, "name": name}
    spans = sorted(last.values(), key=lambda s: s.get("start") or 0)
    return spans[:MAX_SPANS], max(0, len(spans) - MAX_SPANS)


def _span_rows(spans: list[dict[str, Any]], number: int, run_id: str) -> list[dict[str, Any]]:
    """The attempt's spans as rows, each knowing its parent span's row key."""
    mine = [s for s in spans if s.get("attempt") == number]
    ids = {s["span_id"] for s in mine}
    out = []
    for s in mine:
        detail: dict[str, Any] = dict(s.get("attributes") or {})
        if s.get("error"):
            detail["error"] = f"{s['error'].get('type')}: {s['error'].get('message')}"
        status = {"ok": "COMPLETED", "error": "FAILED", "canceled": "CANCELED"}.get(
            s.get("status", ""), "EXECUTING")
        row = _row(f"span:{s['span_id']}", "span", s["name"], 0, s["start"], s.get("end"),
                   status, span=s["span_id"], open=run_id, attempt=number, detail=detail)
        parent = s.get("parent_id")
        row["_parent"] = f"span:{parent}" if parent in ids else None
        out.append(row)
    return out


def _nest(span_rows: list[dict[str, Any]], leaves: list[dict[str, Any]],
          base: int) -> list[dict[str, Any]]:
    """One attempt's rows in tree order: spans under their parent span, and each wait, token or
    child run under the innermost span open when it began (so a child triggered inside
    `logger.trace("fetch")` shows under "fetch"); siblings by start time."""
    by_key = {r["key"]: r for r in span_rows}
    level: dict[str, int] = {}
    for r in span_rows:
        chain = [r]
        while chain[-1]["_parent"] is not None and chain[-1]["_parent"] not in level \
                and len(chain) <= len(span_rows):
            chain.append(by_key[chain[-1]["_parent"]])
        top = chain[-1]["_parent"]
        known = level[top] + 1 if top is not None and top in level else 0
        for link in reversed(chain):
            level[link["key"]] = known
            known += 1
    for leaf in leaves:
        open_then = [r for r in span_rows if r["start"] <= leaf["start"]
                     and (r["end"] is None or leaf["start"] < r["end"])]
        leaf["_parent"] = max(open_then, key=lambda r: level[r["key"]])["key"] if open_then \
            else None
    kids: dict[str | None, list[dict[str, Any]]] = {}
    for r in [*span_rows, *leaves]:
        kids.setdefault(r.pop("_parent"), []).append(r)
    out: list[dict[str, Any]] = []
    stack: list[tuple[dict[str, Any], int]] = [
        (r, base) for r in reversed(sorted(kids.get(None, []), key=_order))]
    while stack:  # depth-first without recursion: spans may nest deeply
        row, depth = stack.pop()
        row["depth"] = depth
        out.append(row)
        stack += [(k, depth + 1) for k in reversed(sorted(kids.get(row["key"], []), key=_order))]
    return out


def _order(row: dict[str, Any]) -> tuple[float, bool]:
    return row["start"], row["kind"] != "span"


def build_trace(store: Store, run_id: str, now: float) -> dict[str, Any]:
    """Everything the trace draws for `run_id`, read in a handful of indexed queries."""
    cols, found = store.select(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id = ?",
                               (run_id,))
    if not found:
        raise RunNotFoundError(f"no run with id {run_id!r}")
    run = dict(zip(cols, found[0], strict=True))
    acols, arows = store.select(
        "SELECT number, status, started_at, finished_at, machine, error FROM attempts "
        "WHERE run_id = ? ORDER BY number", (run_id,))
    attempts = [dict(zip(acols, r, strict=True)) for r in arows]
    for a in attempts:
        a["error"] = loads(a["error"])
    spans, spans_left_out = _spans(store, run_id)
    _, crows = store.select(
        "SELECT id, task_id, status, created_at, started_at, finished_at FROM runs "
        "WHERE parent_id = ? ORDER BY created_at, seq LIMIT ?", (run_id, MAX_CHILDREN + 1))
    _, wrows = store.select(
        "SELECT id, kind, status, created_at, resume_at, timeout_at, completed_at FROM waitpoints "
        "WHERE run_id = ? ORDER BY created_at", (run_id,))
    _, lrows = store.select(
        "SELECT ts, level, message FROM logs WHERE run_id = ? AND level != ? "
        "ORDER BY ts DESC, rowid DESC LIMIT ?", (run_id, SPAN_LEVEL, MAX_MARKS))

    status = run["status"]
    final = status in _FINAL
    created = run["created_at"]
    end = run["finished_at"] if final else None
    rows = [_row("run", "run", run["task_id"], 0, created, end, status, detail={
        "run": run_id, "machine": run["machine"] or "kernel", "queue": run["queue"] or ""})]

    first_start = attempts[0]["started_at"] if attempts else None
    finished = run["finished_at"] if final else None
    # delay_until is the trigger's delay, or (while REATTEMPTING) the next retry's time
    delay = run["delay_until"]
    queued_from = created
    if delay is not None and delay > created and (first_start is None or delay <= first_start):
        rows.append(_row("delayed", "delayed", "delayed", 1, created,
                         delay if delay <= now else finished, "DELAYED", detail={"until": delay}))
        queued_from = delay
    queued_end = first_start if first_start is not None else finished
    if queued_from <= now and (queued_end is None or queued_end >= queued_from):
        rows.append(_row("queued", "queued", "queued", 1, queued_from, queued_end, "QUEUED",
                         detail={"queue": run["queue"] or ""}))

    children = crows[:MAX_CHILDREN]
    for i, a in enumerate(attempts):
        number = a["number"]
        a_end = a["finished_at"]
        detail: dict[str, Any] = {"machine": a["machine"] or "kernel"}
        if a["error"]:
            detail["error"] = f"{a['error'].get('type', '')}: {a['error'].get('message', '')}"
        rows.append(_row(f"attempt:{number}", "attempt", f"attempt {number}", 1, a["started_at"],
                         a_end, a["status"], attempt=number, detail=detail))
        span_rows = _span_rows(spans, number, run_id)
        leaves: list[dict[str, Any]] = []
        tokens: list[dict[str, Any]] = []
        for wid, kind, wstatus, wcreated, resume, timeout, completed in wrows:
            if kind == "wait":
                parts = wid.rsplit(":", 2)  # "<run>:<attempt>:<k>": the wait's durable address
                if len(parts) != 3 or parts[1] != str(number):
                    continue
                leaves.append(_row(f"wait:{wid}", "wait", "wait", 2, wcreated, resume, "WAITING",
                                   attempt=number, detail={
                                       "duration": (resume or wcreated) - wcreated,
                                       "until": resume}))
            elif _attempt_of(completed if completed is not None else now, attempts) == number:
                done = completed if completed is not None else (
                    timeout if wstatus != "WAITING" else None)
                tokens.append(_row(f"token:{wid}", "token", "wait for token", 2,
                                   max(wcreated, a["started_at"] or wcreated), done, wstatus,
                                   attempt=number, detail={"token": wid, "status": wstatus,
                                                           "timeout at": timeout}))
        for cid, ctask, cstatus, ccreated, _cstarted, cfinished in children:
            if _attempt_of(ccreated, attempts) == number:
                leaves.append(_row(f"child:{cid}", "child", ctask, 2, ccreated,
                                   cfinished if cstatus in _FINAL else None, cstatus, open=cid,
                                   attempt=number, detail={"run": cid}))
        for tok in tokens:
            # When the run began to wait on a token is not stored: from the end of the last
            # thing this attempt finished before the token was settled (or its creation).
            settled = tok["end"] if tok["end"] is not None else now
            before = [r["end"] for r in [*span_rows, *leaves]
                      if r["end"] is not None and r["end"] <= settled]
            tok["start"] = max([tok["start"], *before])
        rows += _nest(span_rows, [*leaves, *tokens], 2)
        if a_end is not None and a["status"] != "COMPLETED":
            nxt = attempts[i + 1]["started_at"] if i + 1 < len(attempts) else None
            planned = delay if status == RunStatus.REATTEMPTING.value and nxt is None else None
            if nxt is not None or planned is not None:
                retry_at = nxt if nxt is not None else planned
                rows.append(_row(f"backoff:{number}", "backoff", "retry back-off", 1, a_end,
                                 nxt, "REATTEMPTING", attempt=number,
                                 detail={"next retry at": retry_at}))
    marks = [{"ts": ts, "level": level, "message": message[:300],
              "attempt": _attempt_of(ts, attempts)} for ts, level, message in reversed(lrows)]
    errors = [{"attempt": a["number"], "status": a["status"], "type": a["error"].get("type", ""),
               "message": a["error"].get("message", ""),
               "traceback": a["error"].get("traceback", "")} for a in attempts if a["error"]]
    run_error = loads(run["error"])
    if run_error and not any(e["message"] == run_error.get("message") for e in errors):
        errors.append({"attempt": None, "status": status, "type": run_error.get("type", ""),
                       "message": run_error.get("message", ""),
                       "traceback": run_error.get("traceback", "")})
    starts = [r["start"] for r in rows if r["start"] is not None]
    ends = [r["end"] for r in rows if r["end"] is not None]
    return {
        "run": {"id": run_id, "task_id": run["task_id"], "status": status,
                "replayed_from": run.get("replayed_from"), "parent_id": run["parent_id"],
                "root_id": run["root_id"], "final": final},
        "start": min(starts, default=created),
        "end": max([*ends, *([] if final else [now])], default=now),
        "now": now,
        "rows": rows,
        "marks": marks,
        "errors": errors,
        "left_out": {"spans": spans_left_out, "children": max(0, len(crows) - MAX_CHILDREN)},
    }


__all__ = ("MAX_CHILDREN", "MAX_MARKS", "MAX_SPANS", "build_trace")
