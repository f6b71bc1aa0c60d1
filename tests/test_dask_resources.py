"""The README's `dask worker` command, run verbatim, takes the runs of the presets it claims.

A preset's GB is 10**9 bytes (Dask's "8GB"), so `--resources "CPU=4 MEMORY=8e9"` is exactly a
`large-1x` machine; `worker_resources()` prints that option for every preset.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbtasks import ConfigurationError, Engine
from nbtasks._models import MACHINES

distributed = pytest.importorskip("distributed")

from nbtasks.executors.dask import DaskExecutor, worker_resources  # noqa: E402

#: The command the README gives, with the scheduler's address filled in.
README_WORKER = 'dask worker tcp://scheduler:8786 --nthreads 4 --resources "CPU=4 MEMORY=8e9"'


def as_dask_parses(option: str) -> dict[str, float]:
    """`dask worker --resources` parsing (distributed/cli/dask_worker.py), step for step."""
    return {k: float(v) for k, v in (pair.split("=") for pair in option.replace(",", " ").split())}


@pytest.mark.parametrize("preset", [p for p in MACHINES if p != "kernel"])
def test_every_preset_fits_a_worker_started_with_its_resources(preset: str) -> None:
    machine = MACHINES[preset]
    declared = as_dask_parses(worker_resources(preset))
    assert declared == {"CPU": machine.cpu, "MEMORY": float(machine.memory_bytes)}
    assert machine.memory_bytes == machine.memory * 10**9


def test_worker_resources_names_the_documented_value_and_refuses_bad_presets() -> None:
    assert worker_resources("large-1x") == "CPU=4 MEMORY=8e9"
    assert f'--resources "{worker_resources("large-1x")}"' in README_WORKER
    assert worker_resources("micro") == "CPU=0.25 MEMORY=0.25e9"
    with pytest.raises(ConfigurationError, match="'huge' is not a machine preset"):
        worker_resources("huge")
    with pytest.raises(ConfigurationError, match="kernel machine"):
        worker_resources("kernel")


@pytest.mark.timeout(60)
def test_the_module_prints_a_presets_option() -> None:
    out = subprocess.run([sys.executable, "-m", "nbtasks.executors.dask", "large-2x"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == "CPU=8 MEMORY=16e9\n"
    bad = subprocess.run([sys.executable, "-m", "nbtasks.executors.dask", "huge"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "usage" in bad.stderr and "huge" in bad.stderr


@pytest.fixture
def scheduler() -> Iterator[Any]:
    """A real scheduler with no workers of its own, on the loopback interface only."""
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", scheduler_port=0,
                                  dashboard_address=None) as cluster:
        yield cluster


@pytest.mark.timeout(120)
def test_the_readme_worker_command_takes_a_large_1x_run(scheduler: Any, db_path: Path,
                                                        tmp_path: Path) -> None:
    argv = shlex.split(README_WORKER.replace("tcp://scheduler:8786", scheduler.scheduler_address))
    argv[0] = str(Path(sys.executable).with_name(argv[0]))  # the venv's `dask`
    with open(tmp_path / "worker.log", "wb") as log:  # a file: a full pipe would stall it
        worker = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    try:
        with distributed.Client(scheduler.scheduler_address) as client:
            client.wait_for_workers(1, timeout=60)
            with Engine(store=str(db_path), executor=DaskExecutor(client)) as eng:
                big = eng.task(id="big", machine="large-1x",
                               run=lambda p, ctx: [os.getpid(), ctx.machine.name])
                result = big.trigger(None).wait(timeout=60)
                assert result.ok, result.error
                pid, machine = result.output
                assert machine == "large-1x" and pid != os.getpid()
                # and nothing larger than what the command declares is sent there
                bigger = eng.task(id="bigger", machine="large-2x", run=lambda p, ctx: "ran")
                refused = bigger.trigger(None).wait(timeout=60)
                assert not refused.ok and 'CPU=8 MEMORY=16e9' in str(refused.error)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
