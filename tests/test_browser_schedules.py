"""Schedules, the queue limit override and a kernel restart, in JupyterLab in headless Chromium.

One JupyterLab server and one page serve the module; the tests go on from each other's state, in
file order: `schedules.list()` as a table, the Schedules tab (cron in words, timezone, next and
last run, deactivate, trigger now, delete), the Queues tab (a raised limit starts waiting runs
at once, a bad one is refused in the row, Reset, both themes readable), and last a kernel
restart, after which each cell's widgets read "kernel restarted: run the cell again" (before and
after a page reload), and the dashboard run again holds the runs the old kernel left (its
buttons readable in both themes).
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
    contrast_failures,
    expect_slow,
    jupyterlab,
    kernel_ready,
    page_in_chromium,
    run_all,
    run_notebook,
    set_theme,
    write_notebook,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

NOTEBOOK = "sched.ipynb"
SETUP = '''
import asyncio
import nbtasks

# after a restart, the runs the old kernel left unfinished wait for a person (the held box)
nbtasks.configure(store=".nbtasks/sched.db", resume=False)

@nbtasks.task(id="report", retry={"max_attempts": 1})
def report(payload, ctx):
    return payload["schedule_id"]

@nbtasks.task(id="held", queue={"concurrency_limit": 1}, retry={"max_attempts": 1})
async def held(payload, ctx):
    await asyncio.sleep(600)

weekday = nbtasks.schedules.create(task="report", cron="0 9 * * 1-5", timezone="Europe/London",
                                   deduplication_key="weekday", external_id="<b>acme</b>")
often = nbtasks.schedules.create(task="report", cron="*/5 * * * *",
                                 deduplication_key="often")
waiting = [held.trigger(i) for i in range(4)]
'''
LIST = "nbtasks.schedules.list()"
DASHBOARD = "dash = nbtasks.dashboard()\ndash"
LINE = "waiting[3]"
TRACE = "from nbtasks.notebook.trace import trace_for\ntrace_for(None, waiting[0].id)"
TIMELINE = "from nbtasks.notebook.timeline import Timeline\nTimeline(window=300)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    root = tmp_path_factory.mktemp("sched-lab")
    write_notebook(root / NOTEBOOK, (SETUP, LIST, DASHBOARD, LINE, TRACE, TIMELINE))
    with jupyterlab(root, "jupyterlab-sched") as served:
        yield served


@pytest.fixture(scope="module")
def page(lab: tuple[str, str, Path]) -> Iterator[Any]:
    base, token, _root = lab
    with page_in_chromium("sched") as pg:
        run_notebook(pg, base, token, NOTEBOOK)
        expect_slow()(pg.locator(".nbt-dashboard")).to_be_visible()
        yield pg


def _tab(page: Any, name: str) -> None:
    page.locator(".nbt-tabs .lm-TabBar-tab", has_text=name).click()


def test_schedules_list_is_a_table_with_escaped_text(page: Any) -> None:
    expect = expect_slow()
    table = page.locator(".nbt-schedule-table")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table).to_contain_text("at 09:00, Monday to Friday (0 9 * * 1-5)")
    expect(table).to_contain_text("every 5 minutes")
    expect(table).to_contain_text("Europe/London")
    expect(table).to_contain_text("<b>acme</b>")  # shown as text, not made bold
    expect(table.locator("b")).to_have_count(0)


def test_the_schedules_tab_words_the_cron_and_acts(page: Any) -> None:
    expect = expect_slow()
    _tab(page, "Schedules")
    rows = page.locator(".nbt-schedule")
    expect(rows).to_have_count(2)
    first, second = rows.nth(0), rows.nth(1)
    expect(first).to_contain_text("at 09:00, Monday to Friday")
    expect(first).to_contain_text("Europe/London")
    expect(first).to_contain_text(re.compile(r"next \d\d:\d\d:\d\d|next \d{4}-\d\d-\d\d"))
    expect(second).to_contain_text("every 5 minutes")
    expect(second).to_contain_text(re.compile(r"next .*\(in \d+ (s|min)\)"))
    expect(second).to_contain_text("last —")  # never ran yet
    first.locator(".nbt-schedule-toggle").click()
    expect(first.locator(".nbt-schedule-text")).to_contain_text("inactive")
    expect(first.locator(".nbt-schedule-toggle")).to_have_text("Activate")
    expect(first.locator(".nbt-schedule-text")).to_contain_text("next —")
    first.locator(".nbt-schedule-toggle").click()
    expect(first.locator(".nbt-schedule-toggle")).to_have_text("Deactivate")
    # trigger now: the dashboard opens the new run, which got this schedule's id
    sid = re.search(r"sched_\w+", second.inner_text())
    assert sid is not None, second.inner_text()
    second.locator(".nbt-schedule-trigger").click()
    expect(page.locator(".nbt-detail-header")).to_contain_text("COMPLETED")
    body = page.locator(".nbt-detail-body")
    expect(body).to_contain_text("report")
    expect(body).to_contain_text(sid.group(0))
    # delete asks first; No keeps it, Yes removes it
    _tab(page, "Schedules")
    first.locator(".nbt-schedule-delete").click()
    expect(page.locator(".nbt-schedule-delete-yes")).to_be_visible()
    page.locator(".nbt-schedule-delete-no").click()
    expect(page.locator(".nbt-schedule-delete-yes")).to_be_hidden()
    expect(rows).to_have_count(2)
    first.locator(".nbt-schedule-delete").click()
    page.locator(".nbt-schedule-delete-yes").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("every 5 minutes")
    expect(page.locator(".nbt-schedules-message")).to_contain_text("deleted")


def test_the_queues_tab_overrides_a_limit_at_once_and_resets(page: Any) -> None:
    expect = expect_slow()
    _tab(page, "Queues")
    row = page.locator(".nbt-queue", has_text="task/held")
    text = row.locator(".nbt-queue-text")
    expect(text).to_contain_text("1 running, 3 queued")
    expect(text).to_contain_text("at most 1 at once")
    reset = row.locator(".nbt-queue-reset")
    expect(reset).to_be_hidden()
    field = row.locator(".nbt-queue-limit input")
    field.fill("lots")
    row.locator(".nbt-queue-set").click()
    note = row.locator(".nbt-queue-note")
    expect(note).to_contain_text("queues.set_limit('task/held', 'lots')")
    expect(note).to_contain_text("an int from 0 to 1000")
    expect(text).to_contain_text("1 running, 3 queued")
    field.fill("3")
    row.locator(".nbt-queue-set").click()
    expect(text).to_contain_text("3 running, 1 queued")  # started at once
    expect(text).to_contain_text("the code says at most 1 at once")
    expect(note).to_contain_text("until Reset or a kernel restart")
    expect(reset).to_be_visible()
    reset.click()
    expect(reset).to_be_hidden()
    expect(text).not_to_contain_text("the code says")
    expect(text).to_contain_text("at most 1 at once")
    # pause everything at once, then readable in both themes
    page.locator(".nbt-queues-pause-all").click()
    expect(page.locator(".nbt-queue .nbt-paused")).to_have_count(
        page.locator(".nbt-queue").count())
    for theme in ("JupyterLab Dark", "JupyterLab Light"):
        set_theme(page, theme)
        checked, bad = contrast_failures(page, ".nbt-queues")
        assert checked >= 8 and not bad, (theme, bad)
        if theme == "JupyterLab Dark":
            page.locator(".nbt-queues").screenshot(path=str(ARTIFACTS / "queues-dark.png"))
    page.locator(".nbt-queues-resume-all").click()
    expect(page.locator(".nbt-queue .nbt-paused")).to_have_count(0)


def test_a_kernel_restart_leaves_one_line_per_cell(page: Any, lab: tuple[str, str, Path]) -> None:
    expect = expect_slow()
    base, token, _root = lab
    # the anywidgets' own views watch for the restart: a trace and a timeline in cells of their own
    cells = page.locator(".jp-Notebook .jp-Cell")  # SETUP, LIST, DASHBOARD, LINE, TRACE, TIMELINE
    standalone = (cells.nth(3).locator(".nbt-status-line"), cells.nth(4).locator(".nbt-trace"),
                  cells.nth(5).locator(".nbt-timeline-w"))
    for widget in standalone:
        expect(widget).to_be_visible()
    expect(page.locator(".nbt-restart-line")).to_have_count(0)
    # not awaited: the command's promise waits for the dialog this test answers next
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
    page.locator(".jp-Dialog .jp-mod-accept").click()  # "Restart Kernel?"
    lines = page.locator(".nbt-restart-line")
    expect(lines).to_have_count(4)  # the cells of the dashboard, status line, trace, timeline
    for i in range(4):
        expect(lines.nth(i)).to_have_text("kernel restarted: run the cell again")
    expect(page.locator(".nbt-dashboard")).to_be_hidden()
    for widget in standalone:
        expect(widget).to_be_hidden()
    expect(page.locator(".nbt-schedule-table")).to_be_visible()  # plain HTML stays true
    assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
    checked, bad = contrast_failures(page, ".nbt-kernel-gone")
    assert checked == 1 and not bad, bad
    page.locator(".jp-Notebook").screenshot(path=str(ARTIFACTS / "kernel-restarted.png"))
    # a reload: no widget model is left, so no nbtasks code runs in the page and the manager
    # draws "model not found" per widget; the note saved beside each widget makes that the line
    page.evaluate("async () => { await window.jupyterapp.commands.execute('docmanager:save'); }")
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    failed = page.locator(".jp-OutputArea-output.jupyter-widgets", has_text="model not found")
    expect(failed).to_have_count(4)
    for i in (2, 3, 4, 5):
        out = cells.nth(i).locator(".jp-OutputArea-output.jupyter-widgets")
        expect(out).to_be_visible()
        assert out.evaluate("e => getComputedStyle(e, '::before').content") == \
            '"kernel restarted: run the cell again"', i
        assert out.evaluate("e => getComputedStyle(e).fontSize") == "0px"  # the error text
        assert cells.nth(i).locator(".jp-OutputArea-child").filter(
            has=page.locator(".nbt-reload-mark")).is_hidden()  # the note's own output row
    page.locator(".jp-Notebook").screenshot(path=str(ARTIFACTS / "kernel-restarted-reload.png"))
    # running the cells again brings live widgets back, and the lines go
    kernel_ready(page, base, token, NOTEBOOK)
    run_all(page)
    expect(page.locator(".nbt-dashboard")).to_be_visible()
    for widget in standalone:
        expect(widget).to_be_visible()
    expect(lines).to_have_count(0)
    # the runs the old kernel was executing are held: its buttons read in both themes (success
    # and warning buttons kept ipywidgets' white on green, 4.1:1, and on orange, 2.7:1)
    held = page.locator(".nbt-held")
    expect(held).to_contain_text("interrupted by a kernel restart")
    for name in ("Resume them", "Cancel them"):
        expect(held.locator("button", has_text=name)).to_be_enabled()
    for theme in ("JupyterLab Dark", "JupyterLab Light"):
        set_theme(page, theme)
        checked, bad = contrast_failures(page, ".nbt-held")
        assert checked == 3 and not bad, (theme, bad)  # the line and both buttons
        checked, bad = contrast_failures(page, ".nbt-dashboard")
        assert checked > 30 and not bad, (theme, bad)
