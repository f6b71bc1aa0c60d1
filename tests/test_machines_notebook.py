"""notebooks/04-machines.ipynb runs headless in a real Jupyter kernel and shows what it says."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import execute_notebook

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "04-machines.ipynb"


@pytest.mark.timeout(400)
def test_machines_notebook(tmp_path: Path) -> None:
    nb = execute_notebook(NOTEBOOK, tmp_path, timeout=300)
    streams = [out for cell in nb.cells for out in cell.get("outputs", [])]
    assert not [o for o in streams if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in streams if o.get("name") == "stdout")
    assert "'machine': 'large-1x'" in text and "ran in this kernel? False" in text
    assert "{'rows': 400, 'machine': 'small-2x'}" in text
    assert "1 micro FAILED OutOfMemoryError: the run used" in text
    assert "2 small-2x COMPLETED None" in text
    assert "43 {'factor': 3} ['scaled']" in text
    assert "large-1x on a Dask worker? True" in text
    assert "same answer as the pool: True" in text
    assert (tmp_path / ".nbtasks" / "04-machines.db").exists()  # its own store
