"""notebooks/05-dashboard.ipynb, the dashboard tour, runs in a real Jupyter kernel (nbclient).

Inside a kernel the reprs are live widgets, so this checks what a notebook user gets: widget
views for the dashboard, a handle's status line and a batch's progress bar, and (from the widget
state the notebook saves) what those widgets ended up showing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from _helpers import execute_notebook

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "05-dashboard.ipynb"
VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> nbformat.NotebookNode:
    return execute_notebook(NOTEBOOK, tmp_path_factory.mktemp("tour"), timeout=120)


def _outputs(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _states(nb: nbformat.NotebookNode) -> dict[str, dict[str, Any]]:
    """model id -> state, binary traits (an Image's PNG) included under their own names."""
    saved = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    out = {}
    for mid, model in saved.items():
        state = dict(model["state"])
        for buf in model.get("buffers", []):
            state[buf["path"][0]] = buf["data"]
        out[mid] = state
    return out


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for o in _outputs(nb):
        parts.append(o.get("text", ""))
        parts.append(str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


@pytest.mark.timeout(300)
def test_tour_runs_clean_and_shows_live_widgets(executed: nbformat.NotebookNode) -> None:
    errors = [o for o in _outputs(executed) if o["output_type"] == "error"]
    assert not errors, errors
    views = [o["data"] for o in _outputs(executed) if VIEW in o.get("data", {})]
    plain = [v["text/plain"] for v in views]
    assert any(p.startswith("<nbtasks dashboard: ") for p in plain)  # the dashboard
    lines = [p for p in plain if p.startswith("<RunHandle ") and "long-report" in p]
    assert len(lines) == 2  # status lines for the handle and for the running Run snapshot
    assert any(p.startswith("<batch ") for p in plain)  # the batch's progress bar

    text = _text(executed)
    assert "ConnectionError - upstream refused attempt 3" in text  # read from the detail panel
    assert "attempts: ['FAILED', 'FAILED', 'FAILED']" in text
    assert "{'job': 2}" in text  # the replay's edited payload
    assert "CANCELED" in text  # Cancel button
    assert "does not match Resize" in text  # the Test form showed the validation error
    assert "{'approved': True, 'by': 'ops'}" in text  # Complete token button
    assert "40/40 ok" in text and "PAUSED" in text
    assert "True True" in text  # Replay jumped to the new run and highlighted it
    assert "True DELAYED" in text  # a delayed run says when it starts
    assert "Cancel 12 runs?" in text and "canceled 12 of 12 runs" in text  # bulk, confirmed
    assert "at 09:00, Monday to Friday" in text  # the Schedules tab
    assert "False True False" in text  # read-only and redacted: no card, no actions


@pytest.mark.timeout(300)
def test_saved_widget_state_is_what_the_user_saw(executed: nbformat.NotebookNode) -> None:
    states = _states(executed)
    by_class: dict[str, list[dict[str, Any]]] = {}
    for state in states.values():
        for cls in state.get("_dom_classes", ()):
            by_class.setdefault(cls, []).append(state)
    assert by_class["nbt-dashboard"] and by_class["nbt-tabs"][0]["titles"] == [
        "Runs", "Test", "Schedules", "Queues", "Timeline"]
    bars = by_class["nbt-progress-bar"]  # `await batch`'s bar, and the batch handle's own
    assert len(bars) == 2
    assert all(b["value"] == b["max"] == 40 and b["bar_style"] == "success" for b in bars)
    # the status line; its later, feed-driven updates are saved only if they happen to reach
    # the kernel's iopub while nbclient is running a cell, so only its first state is checked
    assert any("long-report" in s["value"] for s in by_class["nbt-status-text"])
    summary = by_class["nbt-summary"][0]["value"]
    assert "finished in the last minute" in summary and "COMPLETED" in summary
    # each dashboard's page of rows is one widget, its rows plain data
    run_links = [r["id"] for view in by_class["nbt-runs"] for r in view["rows"]]
    assert len(run_links) >= 5 and all(d.startswith("run_") for d in run_links)
    (plot,) = by_class["nbt-timeline-widget"]
    assert plot["data"]["queues"] and plot["data"]["bars"]  # the timeline read its window
