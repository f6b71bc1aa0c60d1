"""The dashboard in a real headless Chromium, served by Voila and driven with Playwright.

A user's session, end to end: a handle's live status line and its Cancel button, a batch's
progress bar, then in the dashboard: trigger a failing run from the Test form, see it appear,
open it, read its error, replay it, see the second run, start a long run, cancel it, see
CANCELED; filters, paging, queues and the timeline.
Every widget update travels the real way: engine events, the feed thread, the kernel's comm
messages, Voila's websocket, the widget manager in the page.

Debian's chromium and Playwright from PyPI; no browser is downloaded. Without chromium the
test is skipped, except under CI=true, where that is a failure. Screenshots go to artifacts/.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
SLOW = 120_000  # ms: two shared cores, a kernel, a server and a browser
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}

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
dash = nbtasks.dashboard(page_size=8)
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require_browser() -> Any:
    """Playwright's sync API, or skip (fail under CI=true) when the browser stack is missing."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "the playwright package"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"chromium at {CHROMIUM} (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests need {missing}, and CI=true: not skipping")
        pytest.skip(f"browser tests need {missing}")
    return sync_api


@contextlib.contextmanager
def _serve(name: str, args: list[str], root: Path, port: int) -> Iterator[None]:
    """Run a Jupyter server (`python -m <args>`) in `root` with private Jupyter dirs; stop it by
    its process group; keep its log in artifacts/."""
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        env[var] = str(root / ".jp" / sub)
    log_path = root / f"{name}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_port(port, proc, timeout=90)
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(log_path, ARTIFACTS / log_path.name)


@pytest.fixture(scope="module")
def voila(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Voila server on a free port, rendering the notebook above; yields the page URL."""
    _require_browser()
    root = tmp_path_factory.mktemp("voila")
    cells = [new_code_cell(c) for c in (NOTEBOOK, STATUS_LINE, PROGRESS)]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC}),
                   root / "dashboard.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    with _serve("voila", ["voila", "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}",
                          f"--token={token}", "--show_tracebacks=True", "dashboard.ipynb"],
                root, port):
        yield f"http://127.0.0.1:{port}/?token={token}"


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """JupyterLab serving a copy of notebooks/05-dashboard.ipynb; yields (base URL, token)."""
    _require_browser()
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / "05-dashboard.ipynb", root / "tour.ipynb")
    settings = root / ".jp" / "settings"
    quiet = settings / "@jupyterlab" / "apputils-extension"
    quiet.mkdir(parents=True)
    (quiet / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    port, token = _free_port(), secrets.token_hex(16)
    with _serve("jupyterlab", [
            "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--LabApp.workspaces_dir={root}/.jp/ws", f"--LabApp.user_settings_dir={settings}",
            "--LabApp.expose_app_in_browser=True"], root, port):
        yield f"http://127.0.0.1:{port}", token


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until the server accepts connections (a TCP connect: a GET on Voila would run the
    notebook)."""
    gave_up = threading.Event()
    timer = threading.Timer(timeout, gave_up.set)
    timer.start()
    try:
        while not gave_up.is_set():
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}; see its log")
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            gave_up.wait(0.2)  # between connection attempts; no page exists yet
        raise TimeoutError(f"the server did not listen on port {port} within {timeout}s")
    finally:
        timer.cancel()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _require_browser()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page; its last state is saved to artifacts/ whatever the outcome."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1400})
    pg.set_default_timeout(SLOW)
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    with contextlib.suppress(Exception):
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-last.png"), full_page=True)
    pg.close()


def _tab(page: Any, title: str) -> None:
    page.locator(".nbt-tabs .lm-TabBar-tab", has_text=title).click()


def _rows(page: Any, task: str) -> Any:
    return page.locator(".nbt-row:not(.nbt-hidden)", has_text=task)


def _trigger_test_run(page: Any, expect: Any, task: str, payload: str) -> None:
    _tab(page, "Test")
    form = page.locator(".nbt-test-form")
    expect(form).to_be_visible()
    form.locator(".nbt-test-task select").select_option(task)
    form.locator(".nbt-test-payload textarea").fill(payload)
    form.locator(".nbt-test-trigger").click()


def test_fail_replay_and_cancel_in_a_real_browser(voila: str, page: Any) -> None:
    expect = _require_browser().expect
    expect.set_options(timeout=SLOW)
    page.goto(voila, wait_until="domcontentloaded")
    dashboard = page.locator(".nbt-dashboard")
    expect(dashboard).to_be_visible(timeout=SLOW * 2)
    # the runs of later cells reach the dashboard live, through the feed thread
    expect(page.locator(".nbt-page-position")).to_contain_text("1\N{EN DASH}8 of 17")
    expect(page.locator(".nbt-row:not(.nbt-hidden)")).to_have_count(8)

    # a batch waited on in a cell showed a progress bar, which filled up
    expect(page.locator(".nbt-progress-label")).to_contain_text("6/6 done")
    expect(page.locator(".nbt-progress-bar .progress-bar-success")).to_have_count(1)

    # a handle as a cell's last value: a live status line whose Cancel button works
    line = page.locator(".nbt-status-line")
    expect(line).to_contain_text("long-task")
    expect(line).to_contain_text("EXECUTING")
    line.locator(".nbt-status-cancel").click()
    expect(line).to_contain_text("CANCELED")
    expect(line.locator(".nbt-status-cancel")).to_have_count(0)
    expect(page.locator(".nbt-summary")).to_contain_text("CANCELED")

    # a bad payload is reported in the form, not raised into the kernel log
    _trigger_test_run(page, expect, "fail-task", "{order: 42")
    expect(page.locator(".nbt-test-message")).to_contain_text("not valid JSON")

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
    expect(body).to_contain_text("cannot process")  # its log line
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
    expect(page.locator(".nbt-row:not(.nbt-hidden)")).to_have_count(2)
    page.locator(".nbt-filter-status select").select_option(label="all statuses")
    expect(page.locator(".nbt-page-position")).to_contain_text("1\N{EN DASH}8 of 20")
    page.locator(".nbt-page-older").click()
    expect(page.locator(".nbt-page-position")).to_contain_text("9\N{EN DASH}16 of 20")
    expect(_rows(page, "long-task").locator(".nbt-s-CANCELED")).to_be_visible()  # the watched one

    # queues and the timeline render
    _tab(page, "Queues")
    expect(page.locator(".nbt-queue", has_text="task/resize-image")).to_contain_text(
        "limit 2 per key")
    _tab(page, "Timeline")
    plot = page.locator(".nbt-timeline .nbt-timeline-w")
    expect(plot.locator(".nbt-tl-row[data-queue='task/resize-image']")).to_be_visible()
    page.locator(".nbt-timeline-window select").select_option(label="last minute")
    expect(plot.locator(".nbt-tick").last).to_have_text("now")  # redrawn for the new window
    expect(plot.locator(".nbt-tick").first).to_have_text("-1 min")
    dashboard.screenshot(path=str(ARTIFACTS / "dashboard-timeline.png"))


def _kernel_ready(page: Any, base: str, token: str) -> None:
    """JupyterLab reports idle before its kernel exists; ask the server (recipe pitfall 2)."""
    for _ in range(600):
        kernels = page.request.get(f"{base}/api/kernels?token={token}").json()
        if kernels and kernels[0]["execution_state"] == "idle" and kernels[0]["connections"]:
            return
        page.wait_for_timeout(200)
    raise TimeoutError("the notebook's kernel never became idle")


def test_the_tour_notebook_in_jupyterlab(jupyterlab: tuple[str, str], page: Any) -> None:
    """JupyterLab lays widgets out differently from Voila (and renders far-away cells lazily):
    the dashboard, its timeline, the status line and the batch bar must all show there too."""
    expect = _require_browser().expect
    expect.set_options(timeout=SLOW)
    base, token = jupyterlab
    page.goto(f"{base}/lab/tree/tour.ipynb?reset&token={token}", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    _kernel_ready(page, base, token)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    expect(page.locator(".jp-Cell").last.locator(".jp-InputPrompt")).to_have_text(
        re.compile(r"\[\d+\]"))
    assert page.locator(".jp-OutputArea-output[data-mime-type="
                        "'application/vnd.jupyter.stderr']").count() == 0

    dashboard = page.locator(".nbt-dashboard").first
    dashboard.scroll_into_view_if_needed()
    expect(dashboard.locator(".nbt-summary")).to_contain_text("CANCELED")
    plot = dashboard.locator(".nbt-timeline-w")  # the last cell opened the Timeline
    expect(plot).to_be_visible()
    page.wait_for_function("() => document.querySelector('.nbt-timeline-w')"
                           ".getBoundingClientRect().width > 300")
    lines = page.locator(".nbt-status-line", has_text="long-report")  # a handle and a Run
    expect(lines).to_have_count(2)
    for i in range(2):  # the feed thread's updates reached JupyterLab
        expect(lines.nth(i)).to_contain_text("CANCELED")
    expect(page.locator(".nbt-progress-label")).to_contain_text("40/40 done")

    dashboard.scroll_into_view_if_needed()
    _tab(page, "Runs")
    first = dashboard.locator(".nbt-row:not(.nbt-hidden) .nbt-run-link").first
    expect(first).to_be_visible()
    fits = first.evaluate("b => b.scrollWidth <= b.clientWidth + 1")
    assert fits, "the run id column was squeezed"
    ARTIFACTS.mkdir(exist_ok=True)
    dashboard.screenshot(path=str(ARTIFACTS / "jupyterlab-dashboard.png"))
