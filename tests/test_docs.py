"""The repository stands alone: what its code and docs cite is in the repository.

Comments cite the design as "docs/design.md, decision N"; that file must exist, and have each
decision so numbered. Nothing may point at documents a person who clones the project never sees.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
DESIGN = ROOT / "docs" / "design.md"
SEARCHED = ["nbtasks", "tests", "benchmarks", "notebooks", "docs", ".ci", "README.md",
            "pyproject.toml"]
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".txt", ".js", ".css", ".cfg", ""}
#: Names of documents outside the repository. Spelled in pieces so this file doesn't match itself.
OUTSIDE = ["DESIGN" + ".md", "STYLE" + ".md", "reference" + " §", "trigger" + "-semantics",
           "../" + "shared", "reference" + "/"]


def repository_text_files() -> list[Path]:
    files: list[Path] = []
    for name in SEARCHED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    return files


def test_nothing_cites_documents_outside_the_repository() -> None:
    files = repository_text_files()
    assert ROOT / "nbtasks" / "_scheduler.py" in files and ROOT / "README.md" in files
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path in files
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if any(name in line for name in OUTSIDE)]
    assert not hits, "\n".join(hits)


def test_design_doc_has_the_sections_and_decisions_the_code_cites() -> None:
    assert DESIGN.exists(), "docs/design.md is cited by the code"
    text = DESIGN.read_text()
    for heading in ("## The engine thread", "## One transition function",
                    "## The durability contract", "## Executors",
                    "## The store and trust boundaries",
                    "## Decisions: where nbtasks differs from Trigger.dev v3"):
        assert heading in text, heading
    decisions = text.split("## Decisions: where nbtasks differs from Trigger.dev v3")[1]
    numbers = [int(n) for n in re.findall(r"^(\d+)\. \*\*", decisions, re.M)]
    assert numbers == list(range(1, 12))
    for failure in ("commit fails", "lock is held", "disk is full", "file is deleted",
                    "poisoned row", "kernel dies"):
        assert failure in text, failure


def test_every_citation_of_a_decision_names_one_that_exists() -> None:
    cited = {}
    for path in repository_text_files():
        for number in re.findall(r"docs/design\.md, decision (\d+)", path.read_text(errors="replace")):
            cited.setdefault(int(number), []).append(path.relative_to(ROOT))
    assert cited, "the code cites decisions by number"
    assert set(cited) <= set(range(1, 12)), cited
