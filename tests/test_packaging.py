"""The package builds cleanly with `python -m build`, and the wheel works on its own.

The wheel is installed into a fresh virtualenv and the README's quickstart runs there, from a
folder outside the checkout, so nothing is imported from the source tree by accident. The new
venv borrows its third-party dependencies from the environment running the tests (like
`--system-site-packages` does), because a full download of pandas and friends takes minutes on a
shared machine; the wheel's own requirements are checked against what it then sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
from _readme import quickstart

ROOT = Path(__file__).parent.parent


class Built(NamedTuple):
    wheel: Path
    sdist: Path
    log: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """An sdist, and a wheel built from that sdist (so the sdist is known to be complete)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("nbtasks-*.whl")
    (sdist,) = out.glob("nbtasks-*.tar.gz")
    return Built(wheel, sdist, proc.stdout + proc.stderr)


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that would import the checkout."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_build_has_no_deprecation_warnings(built: Built) -> None:
    # setuptools warns that a TOML-table license stops building in 2027; an SPDX string doesn't.
    assert "deprecat" not in built.log.lower(), built.log[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_metadata(built: Built) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    with zipfile.ZipFile(built.wheel) as wheel:
        names = wheel.namelist()
        meta = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "nbtasks/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "notebooks/"))]
    headers = [line for line in meta.splitlines() if ": " in line and not line.startswith(" ")]
    assert "License-Expression: MIT" in headers
    assert "Requires-Python: >=3.11" in headers
    for classifier in ("Typing :: Typed", "Programming Language :: Python :: 3.11",
                       "Framework :: Jupyter"):
        assert f"Classifier: {classifier}" in headers
    assert not [h for h in headers if h.startswith("Classifier: License ::")]  # SPDX says it


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_runs_the_quickstart_in_a_fresh_venv(built: Built, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True,
                               env=clean_env()).stdout.strip())
    # Dependencies only: a plain path line adds the directory but runs none of its .pth files,
    # so an editable install of the checkout there stays invisible.
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_borrowed_dependencies.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(built.wheel)], check=True, env=clean_env(), timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()
    check = subprocess.run([str(python), "-c", """
import importlib.metadata as md, pathlib, sys
from packaging.requirements import Requirement
import nbtasks
here = pathlib.Path(nbtasks.__file__).resolve()
assert here.is_relative_to(pathlib.Path(sys.prefix).resolve()), here
assert (here.parent / "py.typed").exists()
unmet = [str(r) for r in map(Requirement, md.requires("nbtasks")) if r.marker is None
         and md.version(r.name) not in r.specifier]
assert not unmet, unmet
print("imported from", here)
"""], capture_output=True, text=True, cwd=work, env=clean_env(), timeout=120)
    assert check.returncode == 0, check.stderr
    assert str(env_dir) in check.stdout

    script = work / "quickstart.py"
    script.write_text(quickstart().code)
    run = subprocess.run([str(python), str(script)], capture_output=True, text=True, cwd=work,
                         env=clean_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "{'message': 'HI'}" in run.stdout
    assert (work / ".nbtasks" / "runs.db").exists()  # the history went next to the script
