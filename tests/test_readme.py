"""The README, read as a newcomer reads it: every code block runs as written, every fact holds.

Each fenced block is one of:

- **bash**: the set-up commands at the top. They install things and open a browser, so the test
  checks what they rely on (the extras, the notebook, `.ci/run` and what it does) rather than
  running them; `test_notebooks` checks that the first one installs every notebook's imports.
- **a script**: a Python block that runs with plain `python`. It is run so, in an empty folder,
  and must print what it shows (a bare expression prints nothing outside a notebook).
- **a kernel block**: a Python block with top-level `await`. It is run in a real Jupyter kernel.
- **illustrative**: a Python block that starts with "# Illustrative" because it needs something
  the reader has to set up (a Dask scheduler). Its test sets that up and runs it.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from _readme import README, Block, readme_blocks
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
TEXT = README.read_text()
BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b.language == "python"]
TOP_LEVEL_AWAIT = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
DASK_ADDRESS = "tcp://scheduler:8786"  # what illustrative blocks connect to; the test swaps it


def needs_kernel(block: Block) -> bool:
    try:
        compile(block.code, str(block), "exec")
    except SyntaxError:
        compile(block.code, str(block), "exec", flags=TOP_LEVEL_AWAIT)  # still valid in a cell
        return True
    return False


SCRIPTS = [b for b in PYTHON if not b.illustrative and not needs_kernel(b)]
KERNEL = [b for b in PYTHON if not b.illustrative and needs_kernel(b)]
ILLUSTRATIVE = [b for b in PYTHON if b.illustrative]


def env() -> dict[str, str]:
    """Run against this checkout's nbtasks, as `pip install -e .` would."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_every_block_is_classified_and_tested() -> None:
    assert {b.language for b in BLOCKS} <= {"bash", "python"}, [str(b) for b in BLOCKS]
    assert BLOCKS[0].language == "bash"
    # Shell blocks other than the set-up commands are commands a reader types elsewhere (a
    # Dask worker, say); each opens with a comment saying where they run.
    assert all(b.code.startswith("#") for b in BLOCKS if b.language == "bash"), \
        [str(b) for b in BLOCKS if b.language == "bash" and not b.code.startswith("#")]
    assert len(SCRIPTS) >= 2 and len(KERNEL) >= 1
    # Every illustrative block is one the Dask test below can run against a real cluster.
    assert ILLUSTRATIVE and all(DASK_ADDRESS in b.code for b in ILLUSTRATIVE), \
        [str(b) for b in ILLUSTRATIVE]


def test_the_readme_starts_with_two_commands_then_an_example_concepts_and_the_comparison() -> None:
    headings = re.findall(r"^## (.+)$", TEXT, re.M)
    assert headings[:3] == ["A first task", "Concepts", "How it compares with Trigger.dev"]
    assert TEXT.index("```bash") < TEXT.index("## A first task")
    commands = [line for line in BLOCKS[0].code.splitlines() if line and not line.startswith("#")]
    assert commands == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[notebook]" && '
        ".venv/bin/jupyter lab notebooks/01-quickstart.ipynb",
        "bash .ci/run",
    ]


def test_what_the_first_command_relies_on() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "notebook" in project["optional-dependencies"]
    assert any(r.startswith("jupyterlab") for r in project["optional-dependencies"]["notebook"])
    assert (ROOT / "notebooks" / "01-quickstart.ipynb").exists()
    assert project["requires-python"] == ">=3.11" and "Python ≥ 3.11" in TEXT


def test_what_the_second_command_does() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.startswith("#!/usr/bin/env bash")
    assert "apt-get install" in ci and "chromium" in ci          # hence "Debian-like systems"
    assert "python3 -m venv .venv" in ci and '-e ".[dev]"' in ci
    for step in (".venv/bin/ruff check", ".venv/bin/mypy", ".venv/bin/python -m pytest"):
        assert step in ci, step
    assert "bash .ci/newest-python" in ci
    newest = (ROOT / ".ci" / "newest-python").read_text()
    assert "debootstrap" in newest and "trixie" in newest and "python3.13" in newest
    first = BLOCKS[0].code
    assert "apt" in first and "Debian-like" in first and "about 15 minutes" in first
    assert "Python 3.13" in first and "debootstrap" in first


def test_no_command_names_an_unpublished_package() -> None:
    assert not re.search(r"pip install nbtasks\b", TEXT)
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                 ["optional-dependencies"])
    named = re.findall(r"pip install -e ['\"]\.\[([\w,]+)\]['\"]", TEXT)
    assert named and {e for group in named for e in group.split(",")} <= extras


def test_every_path_the_readme_names_exists() -> None:
    paths = set(re.findall(r"(?<![\w/.])((?:notebooks|docs|benchmarks|nbtasks|tests|\.ci)/[\w./-]*\w)",
                           TEXT))
    assert "docs/design.md" in paths and ".ci/run" in paths
    assert not [p for p in paths if not (ROOT / p).exists()]


def test_benchmark_commands_run_with_the_venv_python() -> None:
    commands = re.findall(r"`((?:\.venv/bin/)?python) (benchmarks/\w+\.py)`", TEXT)
    assert commands and {python for python, _ in commands} == {".venv/bin/python"}
    assert "source .venv/bin/activate" in TEXT
    for _, script in commands:  # running them takes minutes: check each is a runnable script
        source = (ROOT / script).read_text()
        compile(source, script, "exec")
        assert 'if __name__ == "__main__":' in source, script


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", SCRIPTS, ids=[b.heading for b in SCRIPTS])
def test_script_blocks_run_as_written(block: Block, tmp_path: Path) -> None:
    bare = [node for node in ast.parse(block.code).body
            if isinstance(node, ast.Expr) and not isinstance(node.value, ast.Call)]
    assert not bare, f"{block}: a bare expression shows nothing in a script; print() it"
    (tmp_path / "block.py").write_text(block.code)
    done = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, f"{block}\n{done.stderr}"
    assert done.stdout.strip(), f"{block} prints nothing"
    if block.heading == "A first task":
        assert done.stdout.splitlines()[1:3] == ["{'message': 'HI'}", "['hi']"]
    if block.heading == "Schedules":
        next_run, output = done.stdout.splitlines()
        assert next_run.endswith(("08:00:00+00:00", "09:00:00+00:00"))  # 09:00 London
        assert "'tick': '" in output and "'timezone': 'UTC'" in output


@pytest.mark.timeout(180)
@pytest.mark.parametrize("block", KERNEL, ids=[b.heading for b in KERNEL])
def test_kernel_blocks_run_in_a_kernel(block: Block, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    last = block.code.strip().splitlines()[-1]
    assert "#" in last and "script" in last.split("#", 1)[1], \
        f"{block}: its last line is a bare expression; say it prints nothing in a script"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(block.code)])
    monkeypatch.setenv("PYTHONPATH", env()["PYTHONPATH"])  # the kernel inherits it
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    (out,) = nb.cells[0].outputs
    assert out["output_type"] == "execute_result"
    if "double" in block.code:
        assert out["data"]["text/plain"] == "42"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("block", ILLUSTRATIVE, ids=[b.heading for b in ILLUSTRATIVE])
def test_the_dask_block_configures_a_real_cluster(block: Block, tmp_path: Path) -> None:
    address = DASK_ADDRESS
    assert "dask scheduler" in TEXT
    (tmp_path / "readme_block.py").write_text(block.code)
    script = f"""
from pathlib import Path

from distributed import LocalCluster, get_worker

import nbtasks

if __name__ == "__main__":
    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                           dashboard_address=":0")
    code = Path("readme_block.py").read_text().replace({address!r}, cluster.scheduler_address)
    exec(compile(code, "README.md", "exec"))
    where = nbtasks.task(id="where", machine="micro", run=lambda payload, ctx: get_worker().address)
    print("ran on", where.trigger({{}}).wait(timeout=60).unwrap())
    print("workers", list(cluster.scheduler_info["workers"]))
    cluster.close()
"""
    (tmp_path / "dask_block.py").write_text(script)
    done = subprocess.run([sys.executable, "dask_block.py"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    ran_on, workers = done.stdout.splitlines()[-2:]
    assert ran_on.split()[-1] in workers, done.stdout
