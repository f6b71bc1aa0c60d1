"""The dashboard in a real headless Chromium, served by Voila and driven with Playwright.

Served by Voila, a dashboard is read-only unless the notebook opts in: the page's first
dashboard is the default one, and a viewer finds no button that acts, no Test form, and no
Cancel on a handle's status line. The notebook's second dashboard passes `read_only=False`, and
a user's session runs end to end in it: trigger a failing run from the Test form, see it
appear, open it, read its error, replay it, see the second run, start a long run, cancel it,
see CANCELED; filters, paging, queues and the timeline; a batch's progress bar fills.
Every widget update travels the real way: engine events, the feed thread, the kernel's comm
messages, Voila's websocket, the widget manager in the page.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from _browser import (
    ARTIFACTS,
    SLOW,
    chromium,
    contrast_failures,
    expect_slow,
    free_port,
    new_page,
    require_browser,
    save_last,
    serve,
    write_notebook,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

NOTEBOOK = '''
import asyncio
import nbtasks

@nbtasks.task(id="fail-task", retry={"max_attempts": 2, "min_timeout_in_ms": 10,
                                     "randomize": False})
def fail_task(payload, ctx):
    nbtasks.logger.error("cannot process", order=payload.get("order"))
    raise ValueError(f"order {payload.get('order')} is broken")

@nbtasks.task(id="long-task", retry={"max_attempts": 1})
async def long_task(payload, ctx):
    for step in range(100_000):
        nbtasks.metadata.set("step", step)
        await asyncio.sleep(0.5)

@nbtasks.task(id="send-email", retry={"max_attempts": 1})
async def send_email(payload, ctx):
    await asyncio.sleep(0.2 * payload["n"])
    return {"sent_to": payload["to"]}

@nbtasks.task(id="resize-image", queue={"concurrency_limit": 2}, retry={"max_attempts": 1})
async def resize_image(payload, ctx):
    await asyncio.sleep(0.3)
    return {"width": payload["width"]}

history = [send_email.trigger({"to": f"user{n}@example.com", "n": n % 3}, tags=["newsletter"])
           for n in range(6)]
history += [resize_image.trigger({"width": w}, tags=["thumbnails"]) for w in (64, 128, 256, 512)]
for h in history:
    h.wait(timeout=60)
shared = nbtasks.dashboard(page_size=8)   # Voila: read-only by default
shared.add_class("nbt-shared")
shared
'''
OPTED_IN = '''
dash = nbtasks.dashboard(page_size=8, read_only=False)   # this notebook opts in
dash.add_class("nbt-mine")
dash
'''
STATUS_LINE = '''
watched = long_task.trigger({"watched": True})
watched
'''
PROGRESS = '''
batch = resize_image.batch_trigger([{"width": w} for w in range(6)])
batch.wait(timeout=60)
'''


@pytest.fixture(scope="module")
def voila(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Voila server on a free port, rendering the notebook above; yields the page URL."""
    require_browser()
    root = tmp_path_factory.mktemp("voila")
    write_notebook(root / "dashboard.ipynb", (NOTEBOOK, OPTED_IN, STATUS_LINE, PROGRESS))
    port, token = free_port(), secrets.token_hex(16)
    with serve("voila", ["voila", "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}",
                          f"--token={token}", "--show_tracebacks=True", "dashboard.ipynb"],
                root, port):
        yield f"http://127.0.0.1:{port}/?token={token}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def page(browser: Any, voila: str) -> Iterator[Any]:
    """One Voila page for the module (each page load runs the notebook in a new kernel); its
    last state is saved to artifacts/ whatever the outcome."""
    pg = new_page(browser, height=1400)
    pg.goto(voila, wait_until="domcontentloaded")
    yield pg
    save_last(pg, "voila", full_page=True)
    pg.close()


def _tab(page: Any, title: str) -> None:
    page.locator(".nbt-tabs .lm-TabBar-tab", has_text=title).click()


def _rows(page: Any, task: str) -> Any:
    return page.locator(".nbt-row:not(.nbt-blank)", has_text=task)


def _trigger_test_run(page: Any, expect: Any, task: str, payload: str) -> None:
    _tab(page, "Test")
    form = page.locator(".nbt-test-form")
    expect(form).to_be_visible()
    form.locator(".nbt-test-task select").select_option(task)
    form.locator(".nbt-test-payload textarea").fill(payload)
    form.locator(".nbt-test-trigger").click()


def test_a_voila_page_is_read_only_unless_the_notebook_opts_in(voila: str, page: Any) -> None:
    expect = expect_slow()
    shared = page.locator(".nbt-shared")
    expect(shared).to_be_visible(timeout=SLOW * 2)
    expect(shared.locator(".nbt-read-only")).to_contain_text("read-only")
    expect(shared.locator(".nbt-page-position")).to_contain_text("of 1")
    shared.locator(".nbt-run-link").first.click()  # looking is allowed
    expect(shared.locator(".nbt-detail-header")).to_be_visible()
    for action in (".nbt-cancel", ".nbt-replay", ".nbt-complete-token", ".nbt-bulk",
                   ".nbt-row-pick", ".nbt-reschedule", ".nbt-queue-toggle"):
        assert shared.locator(action).count() == 0, f"{action} on a read-only page"
    shared.locator(".nbt-tabs .lm-TabBar-tab", has_text="Test").click()
    expect(shared.locator(".nbt-test-disabled")).to_contain_text("read-only")
    assert shared.locator(".nbt-test-trigger").count() == 0
    line = page.locator(".nbt-status-line")
    expect(line).to_contain_text("long-task")
    assert line.locator(".nbt-status-cancel").count() == 0  # a handle's line: no Cancel either
    shared.locator(".nbt-tabs .lm-TabBar-tab", has_text="Runs").click()
    expect(shared.locator(".nbt-detail-body")).to_be_visible()
    checked, bad = contrast_failures(page, ".nbt-shared")  # Voila's own (light) theme
    assert checked > 20 and not bad, "\n".join(map(str, bad))


def test_fail_replay_and_cancel_in_a_real_browser(voila: str, page: Any) -> None:
    expect = expect_slow()
    dashboard = page.locator(".nbt-mine")
    expect(dashboard).to_be_visible(timeout=SLOW * 2)
    root, page = page, dashboard  # every lookup below is inside the opted-in dashboard
    # the runs of later cells reach the dashboard live, through the feed thread
    expect(page.locator(".nbt-page-position")).to_contain_text("1\N{EN DASH}8 of 17")
    expect(page.locator(".nbt-row:not(.nbt-blank)")).to_have_count(8)
    # a batch waited on in a cell showed a progress bar, which filled up
    expect(root.locator(".nbt-progress-label")).to_contain_text("6/6 done")
    expect(root.locator(".nbt-progress-bar .progress-bar-success")).to_have_count(1)
    # the status line's run is canceled from the opted-in dashboard
    line = root.locator(".nbt-status-line")
    expect(line).to_contain_text("EXECUTING")
    line.locator(".nbt-status-open").click()  # the run id opens it in the newest dashboard
    expect(page.locator(".nbt-detail-body")).to_contain_text("long-task")
    page.locator(".nbt-cancel").click()
    expect(line).to_contain_text("CANCELED")
    expect(page.locator(".nbt-summary")).to_contain_text("CANCELED")

    # a bad payload is reported in the form as it is typed, and can't be triggered
    _tab(page, "Test")
    form = page.locator(".nbt-test-form")
    form.locator(".nbt-test-task select").select_option("fail-task")
    form.locator(".nbt-test-payload textarea").fill("{order: 42")
    expect(page.locator(".nbt-test-check")).to_contain_text("not valid JSON")
    expect(page.locator(".nbt-test-trigger")).to_be_disabled()

    # trigger a failing run; it appears, and fails after its retry
    page.locator(".nbt-test-payload textarea").fill('{"order": 42}')
    page.locator(".nbt-test-trigger").click()
    failing = _rows(page, "fail-task")
    expect(failing).to_have_count(1)
    expect(failing.locator(".nbt-s-FAILED")).to_be_visible()

    # open it and read the error
    failing.locator(".nbt-run-link").click()
    body = page.locator(".nbt-detail-body")
    expect(body).to_contain_text("ValueError")
    expect(body).to_contain_text("order 42 is broken")
    expect(body).to_contain_text("Traceback")
    expect(body).to_contain_text(re.compile(r"Cell In\[\d+\], line \d+"))  # not a temp file
    expect(page.locator(".nbt-logs")).to_contain_text("cannot process")  # its log line
    expect(page.locator(".nbt-logs")).to_contain_text("order=42")  # attributes as key=value
    expect(page.locator(".nbt-attempts")).to_contain_text("ValueError")
    expect(page.locator(".nbt-detail-header")).to_contain_text("FAILED")
    ARTIFACTS.mkdir(exist_ok=True)
    dashboard.screenshot(path=str(ARTIFACTS / "dashboard-failed-run.png"))

    # replay it: a second run of the same task appears (and fails the same way)
    page.locator(".nbt-replay").click()
    editor = page.locator(".nbt-replay-payload textarea")
    expect(editor).to_have_value('{\n  "order": 42\n}')
    page.locator(".nbt-replay-go").click()
    expect(page.locator(".nbt-detail-message")).to_contain_text("replay of")
    expect(failing).to_have_count(2)
    expect(failing.locator(".nbt-s-FAILED")).to_have_count(2)

    # a long run: open it from the Test form, cancel it, see CANCELED
    _trigger_test_run(page, expect, "long-task", "{}")
    header = page.locator(".nbt-detail-header")
    expect(header).to_contain_text("EXECUTING")
    expect(page.locator(".nbt-detail-body")).to_contain_text("step")  # live metadata
    page.locator(".nbt-cancel").click()
    expect(header).to_contain_text("CANCELED")
    expect(_rows(page, "long-task").locator(".nbt-s-CANCELED")).to_be_visible()
    expect(page.locator(".nbt-summary")).to_contain_text("CANCELED")
    dashboard.screenshot(path=str(ARTIFACTS / "dashboard-canceled-run.png"))

    # the filters work from the page too
    page.locator(".nbt-filter-status select").select_option("FAILED")
    expect(page.locator(".nbt-row:not(.nbt-blank)")).to_have_count(2)
    page.locator(".nbt-filter-status select").select_option(label="all statuses")
    expect(page.locator(".nbt-page-position")).to_contain_text("1\N{EN DASH}8 of 20")
    page.locator(".nbt-page-older").click()
    expect(page.locator(".nbt-page-position")).to_contain_text("9\N{EN DASH}16 of 20")
    expect(_rows(page, "long-task").locator(".nbt-s-CANCELED")).to_be_visible()  # the watched one

    # queues and the timeline render
    _tab(page, "Queues")
    expect(page.locator(".nbt-queue", has_text="task/resize-image")).to_contain_text(
        "at most 2 at once")
    _tab(page, "Timeline")
    plot = page.locator(".nbt-timeline .nbt-timeline-w")
    expect(plot.locator(".nbt-tl-row[data-queue='task/resize-image']")).to_be_visible()
    page.locator(".nbt-timeline-window select").select_option(label="last minute")
    expect(plot.locator(".nbt-tick").last).to_have_text("now")  # redrawn for the new window
    expect(plot.locator(".nbt-tick").first).to_have_text("-1 min")
    dashboard.screenshot(path=str(ARTIFACTS / "dashboard-timeline.png"))
