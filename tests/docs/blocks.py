"""The fenced blocks of a Markdown file, with the directive written above each.

A directive is an HTML comment on the line before the fence (blank lines
allowed), invisible on GitHub:

* ``<!-- doc: illustrative (why) -->``: shown to the reader, never run
  (JavaScript, output, signatures, a fragment of a larger program);
* ``<!-- doc: file=NAME -->``: the block is the file ``NAME``; the session writes
  it to its current folder, where later blocks use it.

Every other ``bash`` and ``python`` block is run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str  # "bash", "python", or the info string's first word
    code: str
    directive: str  # "" (run), "illustrative", or "file=NAME"

    @property
    def kind(self) -> str:
        """``run``, ``file`` or ``skip``."""
        if self.directive == "illustrative":
            return "skip"
        if self.directive.startswith("file="):
            return "file"
        return "run" if self.language in RUNNABLE else "skip"

    @property
    def file_name(self) -> str:
        return self.directive.removeprefix("file=")

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order."""
    lines = path.read_text("utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, start = match.group("fence"), i
        info = match.group("info").strip().split()
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        blocks.append(
            Block(path, start + 1, (info or [""])[0].lower(), "\n".join(body) + "\n", _directive(lines, start))
        )
    return blocks


def _directive(lines: list[str], fence_index: int) -> str:
    j = fence_index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j >= 0:
        match = _DIRECTIVE.match(lines[j])
        if match:
            body = match.group("body")
            if body.startswith("illustrative"):  # a reason may follow: "illustrative (why)"
                return "illustrative"
            if not body.startswith("file="):
                raise ValueError(f"{lines[j]!r}: unknown directive (illustrative or file=NAME)")
            return body
    return ""
