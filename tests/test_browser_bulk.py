"""Bulk actions on the runs table, in JupyterLab in headless Chromium: pick rows or every run
that matches the filters, Cancel or Replay them, a confirmation first when more than ten runs
would be affected, and a progress line that reports what was done.
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
    write_notebook,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

NOTEBOOK = "bulk.ipynb"
SETUP = '''
import asyncio
import nbtasks

nbtasks.configure(store=".nbtasks/bulk.db")

@nbtasks.task(id="slow", retry={"max_attempts": 1})
async def slow(payload, ctx):
    await asyncio.sleep(600)

@nbtasks.task(id="quick", retry={"max_attempts": 1})
def quick(payload, ctx):
    return payload

for h in [quick.trigger(i) for i in range(3)]:
    h.wait(timeout=60)
slow_runs = [slow.trigger(i) for i in range(14)]
dash = nbtasks.dashboard(page_size=20)
dash
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    root = tmp_path_factory.mktemp("bulk-lab")
    write_notebook(root / NOTEBOOK, (SETUP,))
    with jupyterlab(root, "jupyterlab-bulk") as served:
        yield served


@pytest.fixture
def page(lab: tuple[str, str, Path]) -> Iterator[Any]:
    with page_in_chromium("bulk") as pg:
        yield pg


def test_bulk_cancel_and_replay_with_a_confirmation_over_ten(page: Any,
                                                             lab: tuple[str, str, Path]) -> None:
    expect = expect_slow()
    base, token, _root = lab
    run_notebook(page, base, token, NOTEBOOK)
    dash = page.locator(".nbt-dashboard")
    expect(dash).to_be_visible()
    executing = page.locator(".nbt-row-EXECUTING")
    expect(executing).to_have_count(14)
    count = page.locator(".nbt-bulk-count")
    cancel, replay = page.locator(".nbt-bulk-cancel"), page.locator(".nbt-bulk-replay")
    progress, confirm = page.locator(".nbt-bulk-progress"), page.locator(".nbt-bulk-confirm")
    expect(count).to_contain_text("pick rows, or")
    expect(cancel).to_be_disabled()

    # two picked rows: canceled with no question
    for i in range(2):
        executing.nth(i).locator("input.nbt-row-pick").check()
    expect(count).to_contain_text("2 selected")
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(progress).to_contain_text("canceled 2 of 2 runs")
    expect(confirm).to_be_hidden()
    expect(page.locator(".nbt-row-CANCELED")).to_have_count(2)
    expect(count).to_contain_text("pick rows, or")  # the picks are used up

    # every run that matches the filter: twelve, so it asks first; No changes nothing
    page.locator(".nbt-filter-status select").select_option("EXECUTING")
    expect(page.locator(".nbt-row:not(.nbt-blank)")).to_have_count(12)
    page.locator(".nbt-bulk-all input").check()
    expect(count).to_contain_text("all 12 matching")
    cancel.click()
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Cancel 12 runs?")
    page.locator(".nbt-bulk-no").click()
    expect(confirm).to_be_hidden()
    expect(executing).to_have_count(12)
    cancel.click()
    yes = page.locator(".nbt-bulk-yes")
    expect(yes).to_have_text("Yes, cancel 12")
    yes.click()
    expect(progress).to_contain_text("canceled 12 of 12 runs")
    expect(page.locator(".nbt-empty")).to_have_text("no runs match")

    # replay a picked completed run: the new run opens, marked as a replay
    page.locator(".nbt-filter-status select").select_option("COMPLETED")
    completed = page.locator(".nbt-row-COMPLETED")
    expect(completed).to_have_count(3)
    original = completed.first.locator(".nbt-run-link").inner_text().strip()
    assert original.startswith("run_"), original
    completed.first.locator("input.nbt-row-pick").check()
    expect(count).to_contain_text("1 selected")
    replay.click()
    expect(progress).to_contain_text("replayed 1 of 1 runs")
    header = page.locator(".nbt-detail-header")  # the new run opens
    expect(header).to_contain_text(re.compile(r"run_\w+"))
    expect(header).not_to_contain_text(original)
    expect(header).to_contain_text("COMPLETED")
    dash.screenshot(path=str(ARTIFACTS / "bulk.png"))
