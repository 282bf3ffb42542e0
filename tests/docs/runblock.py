"""Run a Python block as a script, and check its ``# -> value`` comments.

``python runblock.py BLOCK.py`` runs the block as ``python BLOCK.py`` would. An
expression statement followed by a comment ``# -> <Python literal>`` (on its own
line or the same one) must evaluate to that value: the documentation's claimed
results are checked, not just its absence of errors.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path
from typing import Any


def expectations(source: str) -> dict[int, str]:
    """Line number of each ``# -> `` comment, and its literal."""
    found: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.string.startswith("# -> "):
            found[token.start[0]] = token.string[len("# -> ") :]
    return found


def run(path: Path) -> None:
    source = path.read_text("utf-8")
    tree = ast.parse(source, str(path))
    wanted = expectations(source)
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    checked = 0
    for statement in tree.body:
        claim = wanted.get(statement.end_lineno or 0) or wanted.get((statement.end_lineno or 0) + 1)
        if isinstance(statement, ast.Expr) and claim is not None:
            code = compile(ast.Expression(statement.value), str(path), "eval")
            value = eval(code, namespace)
            expected = ast.literal_eval(claim.replace("true", "True").replace("false", "False"))
            if value != expected:
                sys.exit(f"{path}:{statement.lineno}: got {value!r}, the documentation says {expected!r}")
            checked += 1
        else:
            exec(compile(ast.Module([statement], []), str(path), "exec"), namespace)
    if checked < len(wanted):
        sys.exit(f"{path}: {len(wanted) - checked} '# -> ' comments follow no expression statement")


if __name__ == "__main__":
    run(Path(sys.argv[1]))
