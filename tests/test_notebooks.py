"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _helpers import execute_notebook

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: Notebooks with a dedicated test of their own (test_frames_notebook, test_machines_notebook,
#: test_dashboard_notebook); the generic run below covers the rest, so none runs twice.
COVERED_ELSEWHERE = {"03-history": "test_frames_notebook.py",
                     "04-machines": "test_machines_notebook.py",
                     "05-dashboard": "test_dashboard_notebook.py"}
GENERIC = [p for p in NOTEBOOKS if p.stem not in COVERED_ELSEWHERE]


def test_every_notebook_is_executed_by_some_test() -> None:
    for path in NOTEBOOKS:
        if path.stem in COVERED_ELSEWHERE:
            test_file = Path(__file__).parent / COVERED_ELSEWHERE[path.stem]
            assert path.name in test_file.read_text(), (path.name, test_file)
        else:
            assert path in GENERIC


execute = execute_notebook


def outputs(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return " ".join(" ".join(parts).split())  # pretty-printing may wrap lists


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", GENERIC, ids=[p.stem for p in GENERIC])
def test_notebook_runs_headless(path: Path, tmp_path: Path) -> None:
    nb = execute(path, tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert (tmp_path / ".nbtasks" / "runs.db").exists()


@pytest.mark.timeout(300)
def test_quickstart_shows_the_seed_page(tmp_path: Path) -> None:
    text = outputs(execute(NOTEBOOKS[0], tmp_path))
    assert "{'message': 'HELLO WORLD'}" in text            # hello world's output
    assert "'attempts': 3" in text                          # flaky succeeded on its 3rd attempt
    assert "[500, 900, 1620, 2916, 5249, 9448, 17006, 30000, 30000, None]" in text
    assert "'on_start', 'init', 'middleware:before'" in text  # the lifecycle order
    assert "(20, 20)" in text                              # the batch all succeeded
    assert "hello world" not in text.replace("HELLO WORLD", "")  # print() went to the run log


@pytest.mark.timeout(300)
def test_queues_notebook_numbers(tmp_path: Path) -> None:
    text = outputs(execute(Path(__file__).parent.parent / "notebooks" /
                           "02-queues-and-waits.ipynb", tmp_path))
    assert "peak concurrency across keys: 3" in text
    assert "EXPIRED" in text
    assert "{'published': True}" in text
    assert "CANCELED" in text
