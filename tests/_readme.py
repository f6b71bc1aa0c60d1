"""The README's fenced code blocks, for the tests that run them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
#: A Python block whose first line starts so is shown, not run as written (it needs a cluster,
#: say); its test runs what can be run.
ILLUSTRATIVE = "# Illustrative"


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    heading: str  # the section it is in
    line: int  # where its fence opens, 1-based

    @property
    def illustrative(self) -> bool:
        return self.code.startswith(ILLUSTRATIVE)

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language}, in '{self.heading}')"


def readme_blocks(text: str | None = None) -> list[Block]:
    text = README.read_text() if text is None else text
    blocks, heading = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence:
            end = lines.index("```", i + 1)
            blocks.append(Block(fence.group(1), "\n".join(lines[i + 1:end]) + "\n", heading, i + 1))
            i = end
        i += 1
    return blocks


def quickstart() -> Block:
    """The README's short example: its first Python block."""
    return next(b for b in readme_blocks() if b.language == "python")
