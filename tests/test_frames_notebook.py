"""notebooks/03-history.ipynb runs headless in a real kernel and shows the expected figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import execute_notebook

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "03-history.ipynb"


@pytest.mark.timeout(300)
def test_history_notebook(tmp_path: Path) -> None:
    nb = execute_notebook(NOTEBOOK, tmp_path, timeout=180)
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = " ".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                    for o in outputs)
    assert "73 of 80 runs completed" in text
    assert "{'etl': 0.1, 'report': 0.05}" in text  # failure rate by task
    assert "['kernel', 'medium-1x', 'small-1x']" in text  # p50/p95 for each machine
    assert "{'ConnectionError': 10, 'KeyError': 2, 'TimeoutError': 15, 'ValueError': 12}" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot
    assert "DECLARATIVE" in text and "Europe/London" in text and "0 2 * * *" in text
    assert "'runs': 81" in text  # the scheduled task's test run read the whole day
    assert (tmp_path / ".nbtasks" / "03-history.db").exists()  # its own store
