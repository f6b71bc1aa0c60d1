"""The shipped notebooks, run as a user runs them: in one folder, one after another, twice.

Every notebook runs top to bottom in a real Jupyter kernel (nbclient), in the same working folder,
in order, and then the whole sequence again. That is what a newcomer does, and it is how shared
history used to leak between them: 03's "deterministic" counts included 01's and 02's runs, and
grew on every pass. Each notebook whose output depends on the history now keeps its own store
(`.nbtasks/<notebook-stem>.db`), and 03 also starts clean.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sqlite3
import sys
import tomllib
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

import nbformat
import pytest
from _helpers import execute_notebook
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Notebooks with a dedicated test of their own as well (one pass, in a fresh folder).
DEDICATED = {"03-history": "test_frames_notebook.py",
             "04-machines": "test_machines_notebook.py",
             "05-dashboard": "test_dashboard_notebook.py"}
#: The notebooks that name their own store, and the tasks each one defines.
OWN_STORE = {"01-quickstart": {"hello-world", "flaky", "validate"},
             "02-queues-and-waits": {"sync-user", "publish-report", "long-job"},
             "03-history": {"etl", "report", "nightly-summary"},
             "04-machines": {"crunch", "load-table", "scale"}}
PASSES = 2


def outputs(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return " ".join(" ".join(parts).split())  # pretty-printing may wrap lists


def errors(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{o['ename']}: {o['evalue']}" for c in nb.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


class Passes(NamedTuple):
    folder: Path
    runs: list[dict[str, nbformat.NotebookNode]]  # one dict per pass: notebook stem -> executed


@pytest.fixture(scope="module")
def passes(tmp_path_factory: pytest.TempPathFactory) -> Passes:
    """Every notebook, in order, in one folder; then all of them again in the same folder."""
    folder = tmp_path_factory.mktemp("notebooks")
    runs = [{path.stem: execute_notebook(path, folder, timeout=300) for path in NOTEBOOKS}
            for _ in range(PASSES)]
    return Passes(folder, runs)


def test_every_notebook_has_a_test() -> None:
    assert [p.stem for p in NOTEBOOKS] == ["01-quickstart", "02-queues-and-waits", "03-history",
                                           "04-machines", "05-dashboard"]
    for stem, test_file in DEDICATED.items():
        assert f"{stem}.ipynb" in (Path(__file__).parent / test_file).read_text(), test_file


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_notebook_runs_clean_on_each_pass(passes: Passes
                                                ) -> None:
    for number, run in enumerate(passes.runs, 1):
        for stem, nb in run.items():
            assert not errors(nb), (number, stem, errors(nb))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_history_figures_are_the_same_on_every_pass(passes: Passes
                                                    ) -> None:
    """03 counts only its own workload, however many times it and its neighbours ran before."""
    figures = []
    for run in passes.runs:
        text = outputs(run["03-history"])
        found = {
            "completed": re.search(r"\d+ of \d+ runs completed", text),
            "shapes": re.search(r"\(\d+, \d+\) \(\d+, \d+\)", text),
            "failure rates": re.search(r"\{'etl': [^}]*\}", text),
            "retries": re.search(r"\{'ConnectionError': [^}]*\}", text),
            "summary runs": re.search(r"'runs': \d+, 'failed': \d+", text),
        }
        assert all(found.values()), (found, text[:2000])
        figures.append({k: m.group(0) for k, m in found.items() if m is not None})
    assert figures[0] == figures[1]
    assert figures[0]["completed"] == "73 of 80 runs completed"
    assert figures[0]["summary runs"] == "'runs': 81, 'failed': 7"
    assert "removed 0 runs an earlier pass left" in outputs(passes.runs[0]["03-history"])
    assert "removed 81 runs an earlier pass left" in outputs(passes.runs[1]["03-history"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_each_notebook_keeps_its_own_history(passes: Passes
                                             ) -> None:
    for stem, tasks in OWN_STORE.items():
        store = passes.folder / ".nbtasks" / f"{stem}.db"
        assert store.exists(), store
        with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db, db:
            seen = {row[0] for row in db.execute("SELECT DISTINCT task_id FROM runs")}
        assert seen == tasks, (stem, seen)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quickstart_shows_the_seed_page(passes: Passes) -> None:
    for run in passes.runs:
        text = outputs(run["01-quickstart"])
        assert "{'message': 'HELLO WORLD'}" in text            # hello world's output
        assert "'attempts': 3" in text                          # flaky succeeded on its 3rd attempt
        assert "[500, 900, 1620, 2916, 5249, 9448, 17006, 30000, 30000, None]" in text
        assert "'on_start', 'init', 'middleware:before'" in text  # the lifecycle order
        assert "(20, 20)" in text                              # the batch all succeeded
        assert "hello world" not in text.replace("HELLO WORLD", "")  # print() went to the run log


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_queues_notebook_numbers(passes: Passes) -> None:
    for run in passes.runs:
        text = outputs(run["02-queues-and-waits"])
        assert "peak concurrency across keys: 3" in text
        assert "EXPIRED" in text
        assert "{'published': True}" in text
        assert "CANCELED" in text


# ------------------------------------------------------------------ what command 1 installs


def first_command_extras() -> set[str]:
    """The extras that the README's first command installs (`pip install -e ".[a,b]"`)."""
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first_block is not None, "the README starts with a bash block"
    install = re.search(r"pip install -e \"\.\[([a-z,]+)\]\"", first_block.group(1))
    assert install is not None, first_block.group(1)
    return set(install.group(1).split(","))


def installed_closure(extras: set[str]) -> set[str]:
    """Distributions that `pip install -e .[extras]` brings, from pyproject and installed metadata."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    wanted, seen_extras = set(extras), set()
    while wanted - seen_extras:
        extra = (wanted - seen_extras).pop()
        seen_extras.add(extra)
        for req in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(req.name) == "nbtasks":
                wanted |= req.extras
            else:
                todo.append(req)
    closure: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:  # not installed here: count it, but not what it needs
            requires = []
        for dep in map(Requirement, requires):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(dep)
    return closure


def notebook_imports(path: Path) -> set[str]:
    """Top-level names of the third-party modules a notebook imports, anywhere in its code."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    found: set[str] = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(compile(cell.source, path.name, "exec", flags=flags)):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"nbtasks"}


def test_command_one_installs_what_every_notebook_imports() -> None:
    closure = installed_closure(first_command_extras())
    providers = md.packages_distributions()
    missing = {}
    for path in NOTEBOOKS:
        for module in notebook_imports(path):
            dists = {canonicalize_name(d) for d in providers.get(module, [module])}
            if not dists & closure:
                missing[f"{path.name}: {module}"] = sorted(dists)
    assert not missing, f"the README's first command does not install {missing}"
