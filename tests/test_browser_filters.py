"""The runs table's filters and sort, driven in JupyterLab in headless Chromium.

The notebook makes two groups of runs a second apart (the second one a batch), a schedule, and a
few tags, then opens a dashboard with five rows a page. The tests use the filter bar as a person
would: a sort with paging through it, a custom from/to range (a bound it cannot read, a range
with nothing in it, "clear filters"), the batch and schedule pickers, tags any/all, test runs, and
the filter bar's readability in the light and dark themes. Expected orders come from the SQLite
file itself, read here with plain SQL.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from _browser import (
    ARTIFACTS,
    contrast_failures,
    expect_slow,
    jupyterlab,
    page_in_chromium,
    run_notebook,
    set_theme,
    write_notebook,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NOTEBOOK = "filters.ipynb"
SETUP = '''
import json, time
import nbtasks

nbtasks.configure(store=".nbtasks/filters.db")

@nbtasks.task(id="nap", retry={"max_attempts": 1})
def nap(seconds, ctx):
    time.sleep(seconds)
    return seconds

@nbtasks.task(id="report", retry={"max_attempts": 1})
def report(payload, ctx):
    return "sent"

sched = nbtasks.schedules.create(task="report", cron="0 3 * * *", deduplication_key="nightly")
'''
HISTORY = '''
early = [nap.trigger(s, tags=["a"]) for s in (0.3, 0.0, 0.6)]
for h in early:
    h.wait(timeout=60)
time.sleep(1.2)  # the custom range splits the history here (to the second)
split = time.time()
time.sleep(1.2)
batch = nap.batch_trigger([0.1, 0.45, 0.2])
both = nap.trigger(0.05, tags=["a", "b"])
for h in [*batch, both]:
    h.wait(timeout=60)
with open("facts.json", "w") as f:
    json.dump({"split": split, "batch": batch.id, "schedule": sched.id}, f)
dash = nbtasks.dashboard(page_size=5)
dash
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    root = tmp_path_factory.mktemp("filters")
    write_notebook(root / NOTEBOOK, (SETUP, HISTORY))
    with jupyterlab(root, "jupyterlab-filters") as served:
        yield served


@pytest.fixture(scope="module")
def page(lab: tuple[str, str, Path]) -> Iterator[Any]:
    """The notebook run once; the tests go on from each other's state, in file order."""
    base, token, _root = lab
    with page_in_chromium("filters") as pg:
        run_notebook(pg, base, token, NOTEBOOK)
        expect_slow()(pg.locator(".nbt-page-position")).to_contain_text("of 7")
        yield pg


@pytest.fixture(scope="module")
def facts(page: Any, lab: tuple[str, str, Path]) -> dict[str, Any]:
    root = lab[2]
    out: dict[str, Any] = json.loads((root / "facts.json").read_text())
    out["db"] = root / ".nbtasks" / "filters.db"
    return out


def _sql(facts: dict[str, Any], sql: str, *params: Any) -> list[Any]:
    with closing(sqlite3.connect(f"file:{facts['db']}?mode=ro", uri=True)) as conn, conn:
        return [r[0] for r in conn.execute(sql, params)]


def _ids(page: Any) -> list[str]:
    return [t.strip() for t in
            page.locator(".nbt-row:not(.nbt-blank) .nbt-run-link").all_inner_texts()]


def _shows(page: Any, ids: list[str]) -> None:
    """Wait until the table shows exactly these runs, in this order."""
    page.wait_for_function(
        "(want) => JSON.stringify([...document.querySelectorAll("
        "'.nbt-row:not(.nbt-blank) .nbt-run-link')].map(e => e.innerText.trim()))"
        " === JSON.stringify(want)", arg=ids)


def _pick(page: Any, picker: str, containing: str) -> None:
    """Choose the option of a dropdown filter whose label contains `containing`."""
    label = page.locator(f".nbt-filter-{picker} option", has_text=containing).first.inner_text()
    page.locator(f".nbt-filter-{picker} select").select_option(label=label)


def test_a_sort_orders_the_rows_and_paging_follows_it(page: Any, facts: dict[str, Any]) -> None:
    expect = expect_slow()
    longest = _sql(facts, "SELECT id FROM runs ORDER BY finished_at - started_at DESC, id DESC")
    _pick(page, "sort", "longest first")
    _shows(page, longest[:5])
    page.locator(".nbt-page-older").click()
    _shows(page, longest[5:])
    expect(page.locator(".nbt-page-position")).to_contain_text("6\N{EN DASH}7 of 7")
    page.locator(".nbt-page-first").click()
    _shows(page, longest[:5])
    oldest = _sql(facts, "SELECT id FROM runs ORDER BY created_at, id")
    _pick(page, "sort", "oldest first")
    _shows(page, oldest[:5])
    page.locator(".nbt-page-last").click()
    _shows(page, oldest[2:])
    started = _sql(facts, "SELECT id FROM runs ORDER BY started_at DESC, id DESC")
    _pick(page, "sort", "started, latest first")
    _shows(page, started[:5])
    _pick(page, "sort", "newest first")
    _shows(page, oldest[::-1][:5])


def test_a_custom_range_reads_what_is_typed_and_clears(page: Any, facts: dict[str, Any]) -> None:
    expect = expect_slow()
    since, until = page.locator(".nbt-filter-from input"), page.locator(".nbt-filter-to input")
    expect(since).to_be_hidden()
    _pick(page, "range", "custom")
    expect(since).to_be_visible()
    expect(page.locator(".nbt-filter-hint")).to_contain_text("filters apply as you type")
    since.fill("next tuesday")
    expect(page.locator(".nbt-filter-hint")).to_contain_text(
        "from: cannot read 'next tuesday'; use 2026-01-31 14:30")
    since.fill("1h")
    split = datetime.fromtimestamp(facts["split"]).strftime("%Y-%m-%d %H:%M:%S")
    until.fill(split)  # up to the split: only the first three runs
    early = _sql(facts, "SELECT id FROM runs WHERE created_at < ? ORDER BY created_at DESC, "
                        "id DESC", facts["split"])
    assert len(early) == 3
    _shows(page, early)
    expect(page.locator(".nbt-filter-hint")).to_contain_text("filters apply as you type")
    until.fill("1h")  # an hour ago: nothing
    expect(page.locator(".nbt-empty")).to_have_text("no runs match")
    page.locator(".nbt-clear-filters").click()
    expect(page.locator(".nbt-page-position")).to_contain_text("of 7")
    expect(since).to_be_hidden()
    expect(page.locator(".nbt-filter-range select")).to_have_value(
        page.locator(".nbt-filter-range option", has_text="any time").get_attribute("value"))


def test_batch_and_schedule_pickers(page: Any, facts: dict[str, Any]) -> None:
    expect = expect_slow()
    batch = _sql(facts, "SELECT id FROM runs WHERE batch_id = ? ORDER BY created_at DESC, "
                        "id DESC", facts["batch"])
    _pick(page, "batch", facts["batch"])
    _shows(page, batch)
    _pick(page, "batch", "all batches")
    expect(page.locator(".nbt-page-position")).to_contain_text("of 7")
    # a run made by the schedule ("Trigger now" on the Schedules tab), then the filter finds it
    page.locator(".nbt-tabs .lm-TabBar-tab", has_text="Schedules").click()
    page.locator(".nbt-schedule-trigger").first.click()
    page.locator(".nbt-tabs .lm-TabBar-tab", has_text="Runs").click()
    expect(page.locator(".nbt-page-position")).to_contain_text("of 8")
    _pick(page, "schedule", facts["schedule"])
    made = _sql(facts, "SELECT id FROM runs WHERE task_id = 'report'")
    assert len(made) == 1
    _shows(page, made)
    _pick(page, "schedule", "all schedules")
    # test runs: the schedule's "Trigger now" is one
    page.locator(".nbt-filter-test select").select_option(label="test runs")
    _shows(page, made)
    page.locator(".nbt-filter-test select").select_option(label="test or not")
    expect(page.locator(".nbt-page-position")).to_contain_text("of 8")


def test_tags_any_or_all_apply_as_you_type(page: Any, facts: dict[str, Any]) -> None:
    expect = expect_slow()
    tagged = _sql(facts, "SELECT id FROM runs WHERE EXISTS (SELECT 1 FROM json_each(runs.tags) "
                         "WHERE value IN ('a', 'b')) ORDER BY created_at DESC, id DESC")
    both = _sql(facts, "SELECT id FROM runs WHERE tags LIKE '%\"b\"%'")
    assert len(tagged) == 4 and len(both) == 1
    page.locator(".nbt-filter-tag input").press_sequentially("a, b", delay=40)
    _shows(page, tagged)
    page.locator(".nbt-filter-all-tags select").select_option(label="all")
    _shows(page, both)
    # the waited-in-queue column and a relative time on every row
    row = page.locator(".nbt-row:not(.nbt-blank)").first
    expect(row.locator(".nbt-c-waited")).to_have_text(re.compile(r"<1 ms|\d+ ms|\d+\.\d s"))
    expect(row.locator(".nbt-ago")).to_have_text(re.compile(r"ago|just now"))
    page.locator(".nbt-filter-tag input").fill("")
    page.locator(".nbt-filter-all-tags select").select_option(label="any")
    expect(page.locator(".nbt-page-position")).to_contain_text("1\N{EN DASH}5 of 8")


@pytest.mark.parametrize("theme", ["JupyterLab Dark", "JupyterLab Light"])
def test_the_filter_bar_reads_well_in_both_themes(page: Any, theme: str) -> None:
    set_theme(page, theme)
    _pick(page, "range", "custom")
    page.locator(".nbt-filter-from input").fill("not a time")
    expect_slow()(page.locator(".nbt-filter-hint")).to_contain_text("cannot read")
    page.wait_for_timeout(300)  # the theme's stylesheet applies on the next frames
    # every filter is within the table's width (the bar wraps rather than clipping the last)
    clipped = page.evaluate(
        "() => { const edge = document.querySelector('div.nbt-table').getBoundingClientRect()"
        ".right; return [...document.querySelectorAll('.nbt-filters > *')].filter(e =>"
        " e.offsetParent && e.getBoundingClientRect().right > edge + 1).map(e => e.className);"
        " }")
    assert not clipped, clipped
    checked, bad = contrast_failures(page, "div.nbt-table")
    assert checked > 30 and not bad, "\n".join(map(str, bad))
    hint = page.locator(".nbt-filter-hint .nbt-message")
    colour = hint.evaluate("e => getComputedStyle(e).color")
    assert colour not in ("rgb(0, 0, 0)", "rgb(255, 255, 255)")  # the theme's error colour
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("div.nbt-table").screenshot(
        path=str(ARTIFACTS / f"filters-{'light' if 'Light' in theme else 'dark'}.png"))
    _pick(page, "range", "any time")
    expect_slow()(page.locator(".nbt-filter-from input")).to_be_hidden()
