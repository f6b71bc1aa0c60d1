"""The run trace and the timeline in a real headless Chromium, in JupyterLab, light and dark.

A notebook runs a task that fails twice, retries, waits, triggers a child and opens spans; then
shows its trace and the timeline. The browser hovers bars (the tooltip gives times), clicks the
child's row and a timeline bar (the click reaches the kernel, which writes it to a file), zooms
the timeline, switches JupyterLab to its dark theme and checks the contrast of every piece of
text against what is behind it. Screenshots of both widgets in both themes go to artifacts/, or
to docs/ with NBTASKS_SCREENSHOTS=docs.
The browser stack and when a missing one skips: tests/_browser.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _browser import (
    ARTIFACTS,
    DOCS,
    expect_slow,
    jupyterlab,
    page_in_chromium,
    run_notebook,
    set_theme,
    write_notebook,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

SETUP = '''
import asyncio, json, pathlib
import nbtasks
from nbtasks.notebook.trace import trace_for
from nbtasks.notebook.timeline import Timeline

@nbtasks.task(id="fetch-page")
async def fetch_page(payload, ctx):
    async with nbtasks.logger.trace("download", url=payload["url"]):
        await asyncio.sleep(0.15)
    return len(payload["url"])

@nbtasks.task(id="crawl", retry={"max_attempts": 3, "min_timeout_in_ms": 400,
                                 "max_timeout_in_ms": 400, "randomize": False})
async def crawl(payload, ctx):
    async with nbtasks.logger.trace("plan", pages=2):
        nbtasks.logger.info("planning", attempt=ctx.attempt.number)
        with nbtasks.logger.trace("robots.txt"):
            await asyncio.sleep(0.1)
    if ctx.attempt.number < 3:
        raise ConnectionError(f"site unreachable (attempt {ctx.attempt.number})")
    await nbtasks.wait.for_(seconds=0.3)
    async with nbtasks.logger.trace("fetch", pages=1):
        got = await fetch_page.trigger_and_wait({"url": "https://example.com/a"})
    nbtasks.logger.warn("slow page", ms=120)
    return got.unwrap()

@nbtasks.task(id="resize", queue={"concurrency_limit": 2}, retry={"max_attempts": 1})
async def resize(payload, ctx):
    await asyncio.sleep(0.2)
    if payload == 3:
        raise ValueError("bad image")

handle = crawl.trigger({"site": "example.com"})
others = [resize.trigger(i) for i in range(6)]
for h in [handle, *others]:
    h.wait(timeout=60)

CLICKS = pathlib.Path("clicks.jsonl")
def record(target):
    with CLICKS.open("a") as f:
        f.write(json.dumps(target) + "\\n")

trace = trace_for(None, handle.id)
trace.on_open(record)
trace
'''
REPLAY = '''
again = handle.replay()
again.wait(timeout=60)
replayed = trace_for(None, again.id)
replayed.on_open(record)
replayed
'''
TIMELINE = '''
timeline = Timeline(window=300)
timeline.refresh()
timeline.on_open(record)
timeline
'''

#: Text whose contrast against its background is below this fails (WCAG AA, normal text).
MIN_CONTRAST = 4.5
CONTRAST_JS = """
(root) => {
  const parse = (c) => { const m = c.match(/[\\d.]+/g).map(Number);
    return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const backdrop = (el) => { const layers = [];
    for (let n = el; n; n = n.parentElement) { const c = parse(getComputedStyle(n).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    let out = [255, 255, 255];
    for (const c of layers.reverse()) out = out.map((v, i) => v * (1 - c[3]) + c[i] * c[3]);
    return out; };
  const results = [];
  for (const el of root.querySelectorAll("*")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!own || box.width === 0 || getComputedStyle(el).visibility === "hidden") continue;
    const style = getComputedStyle(el);
    const fg = parse(style.color); const bg = backdrop(el);
    const mixed = fg.slice(0, 3).map((v, i) => v * fg[3] + bg[i] * (1 - fg[3]));
    const [a, b] = [lum(mixed), lum(bg)].sort((x, y) => y - x);
    const opacity = [...function* () { for (let n = el; n; n = n.parentElement)
      yield Number(getComputedStyle(n).opacity); }()].reduce((x, y) => x * y, 1);
    results.push({ text: el.textContent.trim().slice(0, 40), cls: el.className,
      ratio: (a + 0.05) / (b + 0.05), bg: lum(bg), opacity });
  }
  return results;
}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """JupyterLab serving the notebook above; yields (base URL, token, its root directory)."""
    root = tmp_path_factory.mktemp("trace-lab")
    write_notebook(root / "trace.ipynb", (SETUP, TIMELINE, REPLAY))
    with jupyterlab(root, "jupyterlab-trace") as served:
        yield served


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Any]:
    with page_in_chromium(request.node.name) as pg:
        yield pg


def _clicks(page: Any, root: Path, count: int) -> list[dict[str, Any]]:
    """The clicks the kernel recorded, once there are `count` of them."""
    path = root / "clicks.jsonl"
    for _ in range(300):
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if len(lines) >= count:
                return lines
        page.wait_for_timeout(100)  # the page must keep running while we wait
    raise AssertionError(f"the kernel did not record {count} clicks")


def _contrast(page: Any, selector: str) -> list[dict[str, Any]]:
    return page.locator(selector).first.evaluate(CONTRAST_JS)  # type: ignore[no-any-return]


def _check_contrast(page: Any, selector: str, dark: bool, at_least: int = 10) -> None:
    found = _contrast(page, selector)
    assert len(found) >= at_least, found
    bad = [r for r in found if r["ratio"] < MIN_CONTRAST]
    assert not bad, f"low contrast in {selector}: {bad}"
    backgrounds = {round(r["bg"], 2) for r in found if "nbt-pill" not in str(r["cls"])}
    if dark:  # the page really is dark behind the text, not a light box on a dark page
        assert max(backgrounds) < 0.2, backgrounds


def test_trace_and_timeline_in_jupyterlab_light_and_dark(lab: tuple[str, str, Path],
                                                         page: Any) -> None:
    expect = expect_slow()
    base, token, root = lab
    run_notebook(page, base, token, "trace.ipynb")
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.all_inner_texts()

    trace = page.locator(".nbt-trace").first
    expect(trace).to_be_visible()
    run_id = trace.locator(".nbt-tr-id").inner_text()
    rows = trace.locator(".nbt-tr-row[data-key]")
    keys = [k for k in rows.evaluate_all("rs => rs.map(r => r.dataset.key)")]
    assert keys[:3] == ["run", "queued", "attempt:1"]
    assert {"attempt:2", "attempt:3", "backoff:1", "backoff:2"} <= set(keys)
    assert any(k.startswith("wait:") for k in keys) and any(k.startswith("child:") for k in keys)
    assert sum(k.startswith("span:") for k in keys) == 7  # plan + robots.txt, x3; fetch
    expect(trace.locator(".nbt-tr-error")).to_have_count(2)  # both failed attempts' tracebacks
    expect(trace.locator(".nbt-tr-error pre").last).to_contain_text("site unreachable (attempt 2)")
    expect(trace.locator(".nbt-mark")).to_have_count(4)  # 3 "planning" + 1 "slow page"

    # hover: the tooltip gives the bar's times
    trace.locator(".nbt-tr-row[data-key='attempt:1'] .nbt-tr-bar").hover()
    tip = trace.locator(".nbt-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("attempt 1")
    expect(tip).to_contain_text("status: FAILED")
    expect(tip).to_contain_text(re.compile(r"start: \d\d:\d\d:\d\d\.\d{3}"))
    expect(tip).to_contain_text("error: ConnectionError: site unreachable (attempt 1)")
    trace.locator(".nbt-tr-row[data-key='backoff:1'] .nbt-tr-bar").hover()
    expect(tip).to_contain_text("next retry at")

    # click the child's row: the kernel hears it
    child = trace.locator(".nbt-kind-child")
    child_id = child.locator(".nbt-tr-childid").inner_text()
    assert child_id.startswith("run_") and child_id != run_id
    child.click()
    (click,) = _clicks(page, root, 1)
    assert click["run"] == child_id and click["kind"] == "child"
    expect(child).to_have_class(re.compile("nbt-selected"))

    timeline = page.locator(".nbt-timeline-w").first
    timeline.scroll_into_view_if_needed()
    expect(timeline.locator(".nbt-tl-row[data-queue]")).to_have_count(3)
    bar = timeline.locator(f".nbt-tl-bar[data-run='{run_id}']")
    bar.hover()
    tip = timeline.locator(".nbt-tip")
    expect(tip).to_contain_text(f"crawl · {run_id}")
    expect(tip).to_contain_text("waited in queue")
    bar.click()
    assert _clicks(page, root, 2)[1]["run"] == run_id
    ticks = timeline.locator(".nbt-tick")
    expect(ticks.first).to_have_text("-5 min")
    timeline.locator(".nbt-tl-zoomin").click()  # the pointer stays on the widget from here on
    expect(ticks.first).not_to_have_text("-5 min")
    timeline.locator(".nbt-tl-reset").click()
    expect(ticks.first).to_have_text("-5 min")
    # the wheel zooms in around the pointer: the bar under it widens and stays under it
    before = bar.bounding_box()
    assert before is not None
    page.mouse.move(before["x"] + before["width"] / 2, before["y"] + before["height"] / 2)
    for _ in range(6):
        page.mouse.wheel(0, -100)
    expect(ticks.first).not_to_have_text("-5 min")
    after = bar.bounding_box()
    assert after is not None and after["width"] > before["width"] * 2, (before, after)
    # a drag pans, a double-click shows the whole window again
    zoomed = ticks.all_inner_texts()
    page.mouse.down()
    page.mouse.move(after["x"] - 200, after["y"] + 2, steps=5)
    page.mouse.up()
    assert ticks.all_inner_texts() != zoomed
    timeline.locator(".nbt-tl-plot").dblclick(position={"x": 20, "y": 8})  # off any bar
    expect(ticks.first).to_have_text("-5 min")
    # "now" ticks in the page (while the pointer is elsewhere): a finished run slides left
    # with no message from the kernel
    page.mouse.move(0, 0)
    x0 = page.evaluate(f"() => document.querySelector(\".nbt-tl-bar[data-run='{run_id}']\")"
                       ".getBoundingClientRect().x")
    page.wait_for_function(
        f"x0 => document.querySelector(\".nbt-tl-bar[data-run='{run_id}']\")"
        ".getBoundingClientRect().x < x0 - 1", arg=x0, timeout=10_000)

    # a replay's trace links back to its origin; the link opens it
    replay_trace = page.locator(".nbt-trace").nth(1)
    replay_trace.scroll_into_view_if_needed()
    origin = replay_trace.locator(".nbt-tr-replayed")
    expect(origin).to_have_text(f"replay of {run_id}")
    origin.click()
    assert _clicks(page, root, 3)[2]["run"] == run_id

    # docs/ only when asked (NBTASKS_SCREENSHOTS=docs), so a test run leaves the checkout clean
    shots = DOCS if os.environ.get("NBTASKS_SCREENSHOTS") == "docs" else ARTIFACTS
    shots.mkdir(exist_ok=True)
    page.mouse.move(0, 0)
    trace.scroll_into_view_if_needed()
    trace.screenshot(path=str(shots / "trace-light.png"))
    timeline.screenshot(path=str(shots / "timeline-light.png"))
    _check_contrast(page, ".nbt-trace", dark=False)
    _check_contrast(page, ".nbt-timeline-w", dark=False)

    set_theme(page, "JupyterLab Dark")
    page.wait_for_function("() => { const c = getComputedStyle(document.querySelector("
                           "'.nbt-trace')).backgroundColor.match(/\\d+/g).map(Number);"
                           " return c[0] + c[1] + c[2] < 200; }")
    _check_contrast(page, ".nbt-trace", dark=True)
    _check_contrast(page, ".nbt-timeline-w", dark=True)
    trace.locator(".nbt-tr-row[data-key='attempt:2'] .nbt-tr-bar").hover()
    expect(trace.locator(".nbt-tip")).to_contain_text("attempt 2")
    _check_contrast(page, ".nbt-trace .nbt-tip", dark=True, at_least=5)
    page.mouse.move(0, 0)
    trace.scroll_into_view_if_needed()
    trace.screenshot(path=str(shots / "trace-dark.png"))
    timeline.scroll_into_view_if_needed()
    timeline.screenshot(path=str(shots / "timeline-dark.png"))
