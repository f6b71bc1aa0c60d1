"""The run trace and the timeline in Notebook 7 (not JupyterLab), light and dark, in headless
Chromium: the same notebook as test_browser_trace.py, opened at /notebooks/. The widgets render,
hover shows times, a click on the child's row and on a timeline bar reaches the kernel, the zoom
buttons work, and every text is readable in the dark theme.
The browser stack and when a missing one skips: tests/_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _browser import (
    ARTIFACTS,
    expect_slow,
    jupyterlab,
    page_in_chromium,
    run_notebook,
    set_theme,
    write_notebook,
)
from test_browser_trace import SETUP, TIMELINE, _check_contrast, _clicks

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

NOTEBOOK = "trace7.ipynb"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    root = tmp_path_factory.mktemp("nb7-trace")
    write_notebook(root / NOTEBOOK, (SETUP, TIMELINE))
    with jupyterlab(root, "notebook7-trace") as served:
        yield served


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Any]:
    with page_in_chromium(request.node.name) as pg:
        yield pg


def test_trace_and_timeline_in_notebook_7(server: tuple[str, str, Path], page: Any) -> None:
    expect = expect_slow()
    base, token, root = server
    run_notebook(page, base, token, NOTEBOOK, lab=False)
    assert "/lab" not in page.url  # Notebook 7's own page, not JupyterLab

    trace = page.locator(".nbt-trace").first
    expect(trace).to_be_visible()
    run_id = trace.locator(".nbt-tr-id").inner_text()
    keys = trace.locator(".nbt-tr-row[data-key]").evaluate_all(
        "rs => rs.map(r => r.dataset.key)")
    assert keys[:3] == ["run", "queued", "attempt:1"]
    assert {"attempt:2", "attempt:3", "backoff:1", "backoff:2"} <= set(keys)
    assert any(k.startswith("wait:") for k in keys) and any(k.startswith("child:") for k in keys)
    expect(trace.locator(".nbt-tr-error")).to_have_count(2)
    trace.locator(".nbt-tr-row[data-key='attempt:1'] .nbt-tr-bar").hover()
    tip = trace.locator(".nbt-tip")
    expect(tip).to_contain_text("attempt 1")
    expect(tip).to_contain_text(re.compile(r"start: \d\d:\d\d:\d\d\.\d{3}"))
    child = trace.locator(".nbt-kind-child")
    child_id = child.locator(".nbt-tr-childid").inner_text()
    child.click()
    (click,) = _clicks(page, root, 1)
    assert click["run"] == child_id and click["kind"] == "child"

    timeline = page.locator(".nbt-timeline-w").first
    timeline.scroll_into_view_if_needed()
    expect(timeline.locator(".nbt-tl-row[data-queue]")).to_have_count(3)
    bar = timeline.locator(f".nbt-tl-bar[data-run='{run_id}']")
    bar.hover()
    expect(timeline.locator(".nbt-tip")).to_contain_text(f"crawl · {run_id}")
    bar.click()
    assert _clicks(page, root, 2)[1]["run"] == run_id
    ticks = timeline.locator(".nbt-tick")
    expect(ticks.first).to_have_text("-5 min")
    timeline.locator(".nbt-tl-zoomin").click()
    expect(ticks.first).not_to_have_text("-5 min")
    timeline.locator(".nbt-tl-reset").click()
    expect(ticks.first).to_have_text("-5 min")
    page.mouse.move(0, 0)
    _check_contrast(page, ".nbt-trace", dark=False)
    _check_contrast(page, ".nbt-timeline-w", dark=False)

    set_theme(page, "JupyterLab Dark")
    page.wait_for_function("() => { const c = getComputedStyle(document.querySelector("
                           "'.nbt-trace')).backgroundColor.match(/\\d+/g).map(Number);"
                           " return c[0] + c[1] + c[2] < 200; }")
    _check_contrast(page, ".nbt-trace", dark=True)
    _check_contrast(page, ".nbt-timeline-w", dark=True)
    trace.scroll_into_view_if_needed()
    trace.screenshot(path=str(ARTIFACTS / "nb7-trace-dark.png"))
    timeline.scroll_into_view_if_needed()
    timeline.screenshot(path=str(ARTIFACTS / "nb7-timeline-dark.png"))
