"""What the browser tests share: Jupyter servers on free ports with private directories, one
headless Chromium per module, kernel readiness, and the page-side checks (contrast, on screen).

Debian's chromium and Playwright from PyPI; no browser is downloaded. Without chromium a test is
skipped, except under CI=true, where that is a failure. Screenshots and server logs go to
artifacts/.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "artifacts"
DOCS = ROOT / "docs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
SLOW = 120_000  # ms: two shared cores, a kernel, a server and a browser
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_browser() -> Any:
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


def quiet_lab_settings(root: Path, theme: str | None = None) -> Path:
    """JupyterLab user settings without the news pop-up (it covers the page), and a theme."""
    settings = root / ".jp" / "settings"
    apputils = settings / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True, exist_ok=True)
    (apputils / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    if theme is not None:
        (apputils / "themes.jupyterlab-settings").write_text(f'{{"theme": "{theme}"}}')
    return settings


@contextlib.contextmanager
def serve(name: str, args: list[str], root: Path, port: int) -> Iterator[None]:
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
            wait_for_port(port, proc, timeout=90)
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


def lab_server_args(root: Path, port: int, token: str, settings: Path) -> list[str]:
    """`python -m jupyterlab ...`: the same server also serves Notebook 7's /notebooks pages."""
    return ["jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--LabApp.workspaces_dir={root}/.jp/ws", f"--LabApp.user_settings_dir={settings}",
            "--LabApp.expose_app_in_browser=True",
            "--JupyterNotebookApp.expose_app_in_browser=True"]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
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


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    sync_api = require_browser()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def expect_slow() -> Any:
    """Playwright's `expect`, waiting as long as everything else here does."""
    exp = require_browser().expect
    exp.set_options(timeout=SLOW)
    return exp


def write_notebook(path: Path, cells: Sequence[str]) -> None:
    """A notebook of these code cells, for the python3 kernel."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells],
                                metadata={"kernelspec": KERNELSPEC}), path)


@contextlib.contextmanager
def jupyterlab(root: Path, name: str) -> Iterator[tuple[str, str, Path]]:
    """JupyterLab (which also serves Notebook 7's pages) on `root`, its log named `name`;
    yields (base URL, token, root). Skips first when the browser stack is missing."""
    require_browser()
    settings = quiet_lab_settings(root)
    port, token = free_port(), secrets.token_hex(16)
    with serve(name, lab_server_args(root, port, token, settings), root, port):
        yield f"http://127.0.0.1:{port}", token, root


def new_page(browser: Any, height: int = 1000) -> Any:
    pg = browser.new_page(viewport={"width": 1400, "height": height})
    pg.set_default_timeout(SLOW)
    return pg


def save_last(page: Any, name: str, full_page: bool = False) -> None:
    """The page's last state to artifacts/, whatever the outcome (a dead page saves nothing)."""
    ARTIFACTS.mkdir(exist_ok=True)
    with contextlib.suppress(Exception):
        page.screenshot(path=str(ARTIFACTS / f"{name}-last.png"), full_page=full_page)


@contextlib.contextmanager
def page_in_chromium(name: str) -> Iterator[Any]:
    """A page in its own headless Chromium; its last state is saved as `name`."""
    with chromium() as browser:
        pg = new_page(browser)
        try:
            yield pg
        finally:
            save_last(pg, name)


def run_notebook(page: Any, base: str, token: str, path: str, lab: bool = True) -> None:
    """Open the notebook (in JupyterLab with a fresh workspace, or in Notebook 7), wait for its
    kernel, run every cell and wait until the last one has run."""
    url = (f"{base}/lab/tree/{path}?reset&token={token}" if lab
           else f"{base}/notebooks/{path}?token={token}")
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    kernel_ready(page, base, token, path)
    run_all(page)


def run_all(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    expect_slow()(page.locator(".jp-Cell").last.locator(".jp-InputPrompt")).to_have_text(
        re.compile(r"\[\d+\]"))


def kernel_ready(page: Any, base: str, token: str, path: str) -> None:
    """JupyterLab reports idle before its kernel exists; ask the server about this notebook's
    kernel (the recipe's pitfall 2)."""
    for _ in range(600):
        sessions = page.request.get(f"{base}/api/sessions?token={token}").json()
        kernels = [s["kernel"] for s in sessions if s.get("path", "").endswith(path)]
        if kernels and kernels[0]["execution_state"] == "idle" and kernels[0]["connections"]:
            return
        page.wait_for_timeout(200)
    raise TimeoutError("the notebook's kernel never became idle")


# ---------------------------------------------------------------------- page-side checks

#: WCAG contrast of every visible text inside `root` against the colour actually behind it
#: (backgrounds composited up the tree). Returns the texts below `min` with their colours.
CONTRAST_JS = """
([root, min]) => {
  const parse = (c) => {
    let m = c.match(/^rgba?\\(([^)]+)\\)/);
    if (m) {
      const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
      return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
    }
    m = c.match(/^color\\(srgb ([^)]+)\\)/);
    if (m) {
      const p = m[1].split(/[\\s\\/]+/).filter(Boolean).map(Number);
      return {r: p[0] * 255, g: p[1] * 255, b: p[2] * 255, a: p.length > 3 ? p[3] : 1};
    }
    return null;
  };
  const lum = ({r, g, b}) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const over = (top, base) => ({r: top.r * top.a + base.r * (1 - top.a),
                                g: top.g * top.a + base.g * (1 - top.a),
                                b: top.b * top.a + base.b * (1 - top.a), a: 1});
  const behind = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let base = {r: 255, g: 255, b: 255, a: 1};
    for (let i = layers.length - 1; i >= 0; i--) base = over(layers[i], base);
    return base;
  };
  const bad = [];
  let checked = 0;
  const all = root.querySelectorAll("*");
  for (const el of all) {
    if (el.closest(".nbt-hidden, button:disabled, option")) continue;  // badges count too
    const own = [...el.childNodes].filter((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own.length) continue;
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (!box.width || !box.height || style.visibility === "hidden" || style.display === "none"
        || Number(style.opacity) === 0) continue;
    const fg = parse(style.color);
    if (!fg) continue;
    const bg = behind(el);
    const a = lum(over(fg, bg)), b = lum(bg);
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    checked++;
    if (ratio < min) bad.push({text: own[0].textContent.trim().slice(0, 40),
                               ratio: Math.round(ratio * 100) / 100, color: style.color,
                               cls: el.className});
  }
  return {checked, bad};
}
"""


def set_theme(page: Any, name: str) -> None:
    """Switch JupyterLab (or Notebook 7) to the theme `name` and wait until it applies."""
    light = "true" if "Light" in name else "false"
    page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})",
                  name)
    page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{light}'")
    page.wait_for_timeout(300)  # the theme's stylesheet applies on the next frames


def contrast_failures(page: Any, selector: str, minimum: float = 4.5) -> tuple[int, list[Any]]:
    """(texts checked, texts under `minimum`) inside the first element matching `selector`."""
    handle = page.locator(selector).first.element_handle()
    out = page.evaluate(CONTRAST_JS, [handle, minimum])
    return int(out["checked"]), list(out["bad"])


#: `e => bool`: whether some of the element is inside the window's viewport (both ways).
ON_SCREEN_JS = ("e => { const r = e.getBoundingClientRect();"
                " return r.bottom > 0 && r.top < window.innerHeight && r.height > 0"
                " && r.right > 0 && r.left < window.innerWidth && r.width > 0; }")


def on_screen(locator: Any) -> bool:
    """Whether some of the element is inside the window's viewport (both ways)."""
    return bool(locator.evaluate(ON_SCREEN_JS))
