"""JSONLex: JSON expressions evaluated safely, with the original's operators and JavaScript value semantics."""

from __future__ import annotations

from exprsn_ipc.jsonlex.evaluator import (
    OPERATORS,
    UNDEFINED,
    JSONLexLimits,
    compile,
    compile_expression,
    evaluate,
    is_jsonlex,
)

__all__ = [
    "OPERATORS",
    "UNDEFINED",
    "JSONLexLimits",
    "compile",
    "compile_expression",
    "evaluate",
    "is_jsonlex",
]
