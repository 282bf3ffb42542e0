"""JSONLex: the small JSON expression language of the Exprsn IPC system.

An expression is ``{"__jsonlex": True, "expr": <body>}``. The body is plain JSON
in which an object whose single key is an operator (``{"$var": "user.name"}``,
``{"$eq": [a, b]}`` ...) is evaluated against a context. Values follow
JavaScript rules (truthiness, ``===``, relational comparison, ``String()``), so
the results match the Node.js services. See ``docs/jsonlex.md`` for the operator
table and the differences from the original implementation.
The operators are declared in :mod:`exprsn_ipc.jsonlex.operators`, the walk and its limits in
:mod:`exprsn_ipc.jsonlex.machine`, JavaScript value semantics in :mod:`exprsn_ipc.jsonlex.jsvalues`.

Every failure raises :class:`~exprsn_ipc.errors.JSONLexError` whose ``path``
locates the failing node (``$.isAdult.$gte[1]``); evaluation is bounded by
:class:`JSONLexLimits` (depth, visited nodes, output size).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from exprsn_ipc.errors import JSONLexError
from exprsn_ipc.jsonlex.jsvalues import UNDEFINED, js_type, truthy
from exprsn_ipc.jsonlex.machine import Evaluation, Fail, JSONLexLimits, format_path, internal_error
from exprsn_ipc.jsonlex.operators import REGISTRY

__all__ = ["OPERATORS", "UNDEFINED", "JSONLexLimits", "compile", "compile_expression", "evaluate", "is_jsonlex"]

_DEFAULT_LIMITS: Final = JSONLexLimits()

#: Every operator name JSONLex understands (the declarations are in :mod:`exprsn_ipc.jsonlex.operators`).
OPERATORS: Final[frozenset[str]] = frozenset(REGISTRY)


# ---------------------------------------------------------------- public API


def _limits(limits: JSONLexLimits | None) -> JSONLexLimits:
    if limits is None:
        return _DEFAULT_LIMITS
    if not isinstance(limits, JSONLexLimits):
        raise JSONLexError(f"limits must be a JSONLexLimits, got {type(limits).__name__}")
    return limits


def _guarded(limits: JSONLexLimits | None, step: Callable[[Evaluation], Any]) -> Any:
    """Run ``step`` on a fresh evaluator; turn every failure into a :class:`JSONLexError`."""
    try:
        return step(Evaluation(_limits(limits), REGISTRY))
    except JSONLexError:
        raise
    except Fail as fail:
        raise JSONLexError(fail.reason, path=format_path(fail.segs)) from fail.__cause__
    except Exception as exc:  # includes RecursionError and MemoryError-free surprises
        raise JSONLexError(internal_error(exc)) from exc


def is_jsonlex(x: Any) -> bool:
    """True for a dict whose ``__jsonlex`` field is exactly ``True``."""
    return isinstance(x, dict) and x.get("__jsonlex") is True


def evaluate(expression: Any, context: Mapping[str, Any] | None = None, *, limits: JSONLexLimits | None = None) -> Any:
    """Evaluate a JSONLex expression against ``context``.

    Anything that is not a dict with a truthy ``__jsonlex`` field is returned
    unchanged (the original's echo behaviour). Results are plain JSON values:
    ``undefined`` becomes ``None`` at the top level and in lists and is dropped
    from objects. Raises :class:`JSONLexError` (never anything else) on failure.
    """
    if not isinstance(expression, dict) or not truthy(expression.get("__jsonlex", UNDEFINED)):
        return expression
    if context is not None and not isinstance(context, Mapping):
        raise JSONLexError(f"context must be an object, got {js_type(context)}")
    body = expression.get("expr", UNDEFINED)
    result = _guarded(limits, lambda run: run.evaluate_body(body, context))
    return None if result is UNDEFINED else result


def compile(expr: Any, *, limits: JSONLexLimits | None = None) -> Any:
    """Mark ``expr`` as a JSONLex expression after validating every branch of it.

    ``None`` and non-dicts are returned unchanged; so is a dict that already has a
    truthy ``__jsonlex`` (its ``expr`` is validated too). Otherwise the result is
    ``{"__jsonlex": True, "expr": expr, "compiled": <epoch milliseconds>}``.
    """
    if not isinstance(expr, dict):
        return expr
    marked = truthy(expr.get("__jsonlex", UNDEFINED))
    body = expr.get("expr", UNDEFINED) if marked else expr
    _guarded(limits, lambda run: run.validate(body))
    if marked:
        return expr
    return {"__jsonlex": True, "expr": expr, "compiled": int(time.time() * 1000)}


#: Alias of :func:`compile` that does not shadow the builtin.
compile_expression = compile
