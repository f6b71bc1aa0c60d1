"""Code defined in `__main__` with no file behind it (a notebook cell) runs on a preset.

The script is run with `python -c`, so like a notebook's cells its functions, closures, classes
and globals exist nowhere but in the kernel's `__main__`: they must travel by value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CELLS = textwrap.dedent('''
    import json, os
    import pydantic
    import nbtasks
    from nbtasks import Engine
    from nbtasks.executors import ProcessExecutor

    eng = Engine(store=":memory:", executor=ProcessExecutor(max_workers=1))
    BONUS = 1

    class Order(pydantic.BaseModel):
        qty: int

    def helper(x):
        return x + BONUS

    def make_scaler(factor):
        def scale(payload, ctx):
            return {"value": helper(payload.qty * factor), "pid": os.getpid(),
                    "module": scale.__module__}
        return scale

    scale = eng.schema_task(id="scale", schema=Order, machine="micro", run=make_scaler(3))

    @eng.task(id="outer", machine="micro")
    async def outer(payload, ctx):
        nbtasks.logger.info("outer ran")
        child = await scale.trigger_and_wait({"qty": payload})
        return child.unwrap()

    out = outer.trigger(14).wait(timeout=60)
    bad = scale.trigger({"qty": 2}).wait(timeout=60)
    print(json.dumps({"ok": out.ok, "output": out.output, "error": str(out.error),
                      "kernel": os.getpid(), "bad": bad.output}))
    eng.close()
''')


@pytest.mark.timeout(90)
def test_notebook_style_closures_classes_and_globals_run_on_a_preset() -> None:
    done = subprocess.run([sys.executable, "-c", CELLS], capture_output=True, text=True,
                          timeout=80)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"], report["error"]
    assert report["output"]["value"] == 43
    assert report["output"]["module"] == "__main__"
    assert report["output"]["pid"] != report["kernel"]
    assert report["bad"]["value"] == 7
