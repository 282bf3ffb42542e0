"""JSONLex: the small JSON expression language of the Exprsn IPC system.

An expression is ``{"__jsonlex": True, "expr": <body>}``. The body is plain JSON
in which an object whose single key is an operator (``{"$var": "user.name"}``,
``{"$eq": [a, b]}`` ...) is evaluated against a context. Values follow
JavaScript rules (truthiness, ``===``, relational comparison, ``String()``), so
the results match the Node.js services. See ``docs/jsonlex.md`` for the operator
table and the differences from the original implementation.
The JavaScript value semantics themselves live in :mod:`exprsn_ipc.jsonlex.jsvalues`.

Every failure raises :class:`~exprsn_ipc.errors.JSONLexError` whose ``path``
locates the failing node (``$.isAdult.$gte[1]``); evaluation is bounded by
:class:`JSONLexLimits` (depth, visited nodes, output size).
"""

from __future__ import annotations

import json
import operator
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

from exprsn_ipc.errors import JSONLexError
from exprsn_ipc.jsonlex.jsvalues import (
    UNDEFINED,
    array_index,
    compare_keys,
    get_path,
    js_type,
    scalar_to_string,
    strict_equals,
    to_number,
    truthy,
)

__all__ = ["OPERATORS", "UNDEFINED", "JSONLexLimits", "compile", "compile_expression", "evaluate", "is_jsonlex"]


@dataclass(frozen=True, kw_only=True, slots=True)
class JSONLexLimits:
    """Bounds of one evaluation (or one ``compile`` validation).

    ``max_depth``: nesting depth of the expression (and of lists turned into strings).
    ``max_nodes``: evaluation steps; each node evaluated counts, per ``$map`` item too.
    ``max_output``: characters of produced strings plus elements (and key characters)
    of produced lists and objects, including values read from the context.
    """

    max_depth: int = 64
    max_nodes: int = 10_000
    max_output: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_nodes", "max_output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"JSONLexLimits.{name} must be a positive integer, got {value!r}")


_DEFAULT_LIMITS: Final = JSONLexLimits()
_Ctx: TypeAlias = "dict[str, Any] | tuple[str, Any, _Ctx]"


class _Fail(Exception):
    """Internal failure; ``segs`` collects the path innermost-first while unwinding."""

    def __init__(self, reason: str, *segs: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segs: list[Any] = list(segs)


# ---------------------------------------------------------------- context lookup and error paths

_IDENT_RE: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*", re.ASCII)


def _lookup(ctx: _Ctx, name: str) -> Any:
    while isinstance(ctx, tuple):
        if ctx[0] == name:
            return ctx[1]
        ctx = ctx[2]
    return ctx.get(name, UNDEFINED)


def _format_path(segs: list[Any]) -> str:
    out = ["$"]
    for seg in reversed(segs):
        if isinstance(seg, int) and not isinstance(seg, bool):
            out.append(f"[{seg}]")
        elif isinstance(seg, str) and _IDENT_RE.fullmatch(seg):
            out.append("." + seg)
        else:
            out.append("[" + json.dumps(str(seg), ensure_ascii=False) + "]")
    return "".join(out)


def _reraise(exc: Exception, seg: Any) -> NoReturn:
    """Re-raise ``exc`` one level up with ``seg`` added to its path; wrap unexpected errors."""
    if isinstance(exc, _Fail):
        if seg is not None:
            exc.segs.append(seg)
        raise exc
    raise _Fail(_internal(exc), *(() if seg is None else (seg,))) from exc


def _internal(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "expression too deep (Python recursion limit reached; lower max_depth)"
    return f"internal error: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- operand shapes

_ARITY: Final[dict[str, tuple[int, int]]] = {
    "$eq": (2, 2), "$ne": (2, 2), "$gt": (2, 2), "$lt": (2, 2), "$gte": (2, 2), "$lte": (2, 2),
    "$and": (0, -1), "$or": (0, -1), "$concat": (0, -1),
    "$if": (2, 3), "$substring": (2, 3), "$get": (2, 3), "$has": (2, 2),
}  # fmt: skip
_SPECS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "$map": (("array", "expr"), ("as",)),
    "$filter": (("array", "condition"), ("as",)),
    "$reduce": (("array", "expr"), ("initial", "as", "accumulator")),
}
_SINGLE: Final = frozenset({"$not", "$length"})


def _operands(op: str, operand: Any) -> list[Any]:
    lo, hi = _ARITY[op]
    if isinstance(operand, list) and len(operand) >= lo and (hi < 0 or len(operand) <= hi):
        return operand
    want = f"{lo} " if lo == hi else f"{lo} or {hi} " if hi > 0 else ""
    raise _Fail(f"{op} expects a list of {want}expressions")


def _name(spec: dict[Any, Any], key: str, default: str) -> str:
    name = spec.get(key, default)
    if not isinstance(name, str) or not name or "." in name:
        raise _Fail(f"{key!r} must be a non-empty variable name without '.'", key)
    return name


def _spec(op: str, operand: Any) -> tuple[str, str]:
    """Check a ``$map``/``$filter``/``$reduce`` object; return its item and accumulator names."""
    required, optional = _SPECS[op]
    if not isinstance(operand, dict):
        raise _Fail(f"{op} expects an object with keys {', '.join(required)}")
    for key in operand:
        if key not in required and key not in optional:
            raise _Fail(f"unexpected key {key!r} in {op}", key)
    for key in required:
        if key not in operand:
            raise _Fail(f"{op} is missing {key!r}")
    item = _name(operand, "as", "item")
    if op != "$reduce":
        return item, ""
    acc = _name(operand, "accumulator", "acc")
    if acc == item:
        raise _Fail("$reduce 'as' and 'accumulator' must differ")
    return item, acc


# ---------------------------------------------------------------- evaluator


class _Run:
    """State of one evaluation or validation: limit counters and a size cache."""

    __slots__ = ("max_depth", "max_nodes", "max_output", "out", "sizes", "steps")

    def __init__(self, limits: JSONLexLimits) -> None:
        self.max_depth = limits.max_depth
        self.max_nodes = limits.max_nodes
        self.max_output = limits.max_output
        self.steps = 0
        self.out = 0
        self.sizes: dict[int, tuple[Any, int]] = {}

    def _tick(self, depth: int) -> None:
        self.steps += 1
        if self.steps > self.max_nodes or depth > self.max_depth:
            self._over(depth)

    def _over(self, depth: int) -> None:
        if depth > self.max_depth:
            raise _Fail(f"maximum depth of {self.max_depth} exceeded (max_depth)")
        raise _Fail(f"node limit of {self.max_nodes} exceeded (max_nodes)")

    def _charge(self, n: int) -> None:
        self.out += n
        if self.out > self.max_output:
            raise _Fail(f"output limit of {self.max_output} exceeded (max_output)")

    def _charge_value(self, v: Any) -> None:
        """Charge a value that was not built here (read from the context or a sub-object)."""
        if isinstance(v, str):
            self._charge(len(v))
        elif isinstance(v, list | tuple | dict):
            hit = self.sizes.get(id(v))
            if hit is None or hit[0] is not v:
                hit = (v, self._deep_size(v))
                self.sizes[id(v)] = hit
            self._charge(hit[1])

    def _deep_size(self, v: Any) -> int:
        budget = self.max_output - self.out
        total = 0
        stack = [v]
        while stack:
            x = stack.pop()
            if isinstance(x, str):
                total += len(x)
            elif isinstance(x, dict):
                total += len(x) + sum(len(k) for k in x if isinstance(k, str))
                if total <= budget:
                    stack.extend(x.values())
            elif isinstance(x, list | tuple):
                total += len(x)
                if total <= budget:
                    stack.extend(x)
            if total > budget:
                self._charge(total)  # raises
        return total

    def _ev(self, node: Any, ctx: _Ctx, depth: int, seg: Any) -> Any:
        try:
            self.steps += 1
            if self.steps > self.max_nodes or depth > self.max_depth:
                self._over(depth)
            if isinstance(node, str):
                self._charge(len(node))
                return node
            if isinstance(node, dict):
                if not node:
                    return {}
                first = next(iter(node))
                if isinstance(first, str) and first[:1] == "$":
                    if len(node) != 1:
                        raise _Fail("operator object must have exactly one key")
                    handler = _HANDLERS.get(first)
                    if handler is None:
                        raise _Fail(f"unknown operator {first}", first)
                    try:
                        return handler(self, node[first], ctx, depth + 1)
                    except Exception as exc:
                        _reraise(exc, first)
                out: dict[Any, Any] = {}
                size = 0
                for key, sub in node.items():
                    if isinstance(key, str):
                        if key[:1] == "$":
                            raise _Fail(_misplaced(key), key)
                        size += len(key)
                    value = self._ev(sub, ctx, depth + 1, key)
                    if value is not UNDEFINED:
                        out[key] = value
                self._charge(size + len(out))
                return out
            if isinstance(node, list):
                items = []
                for i, sub in enumerate(node):
                    value = self._ev(sub, ctx, depth + 1, i)
                    items.append(None if value is UNDEFINED else value)
                self._charge(len(items))
                return items
            return node
        except Exception as exc:
            _reraise(exc, seg)

    def _top(self, body: Any, context: Mapping[str, Any] | None) -> Any:
        base = {} if context is None else context if isinstance(context, dict) else dict(context)
        return self._ev(body, base, 0, None)

    def _check(self, node: Any, depth: int, seg: Any) -> None:
        """Validate the whole tree (every branch) without evaluating it."""
        try:
            self._tick(depth)
            if isinstance(node, list):
                for i, sub in enumerate(node):
                    self._check(sub, depth + 1, i)
            elif isinstance(node, dict) and node:
                first = next(iter(node))
                if isinstance(first, str) and first[:1] == "$":
                    if len(node) != 1:
                        raise _Fail("operator object must have exactly one key")
                    if first not in _HANDLERS:
                        raise _Fail(f"unknown operator {first}", first)
                    try:
                        self._check_op(first, node[first], depth + 1)
                    except Exception as exc:
                        _reraise(exc, first)
                    return
                for key, sub in node.items():
                    if isinstance(key, str) and key[:1] == "$":
                        raise _Fail(_misplaced(key), key)
                    self._check(sub, depth + 1, key)
        except Exception as exc:
            _reraise(exc, seg)

    def _check_op(self, op: str, operand: Any, depth: int) -> None:
        if op == "$var":
            if not isinstance(operand, str):
                raise _Fail("$var expects a path string")
        elif op in _SINGLE:
            self._check(operand, depth, None)
        elif op in _SPECS:
            _spec(op, operand)
            for key in ("array", "initial", "expr", "condition"):
                if key in operand:
                    self._check(operand[key], depth, key)
        else:
            for i, sub in enumerate(_operands(op, operand)):
                self._check(sub, depth, i)

    # -- conversions needing limits

    def _str(self, v: Any, depth: int = 0) -> str:
        """JavaScript String(): lists join their elements with "," (null/undefined as "")."""
        if isinstance(v, str):
            return v
        if isinstance(v, list | tuple):
            if depth >= self.max_depth:
                raise _Fail(f"maximum depth of {self.max_depth} exceeded (max_depth)")
            s = ",".join("" if x is None or x is UNDEFINED else self._str(x, depth + 1) for x in v)
            if len(s) > self.max_output:
                raise _Fail(f"output limit of {self.max_output} exceeded (max_output)")
            return s
        if isinstance(v, Mapping):
            return "[object Object]"
        return scalar_to_string(v)

    def _rel(self, op: str, operand: Any, ctx: _Ctx, depth: int) -> tuple[Any, Any]:
        """Evaluate both sides and map them to keys that Python compares like JS ``<``."""
        a, b = self._pair(op, operand, ctx, depth)
        if isinstance(a, list | tuple):
            a = self._str(a)
        elif isinstance(a, Mapping):
            a = "[object Object]"
        if isinstance(b, list | tuple):
            b = self._str(b)
        elif isinstance(b, Mapping):
            b = "[object Object]"
        return compare_keys(a, b)

    def _pair(self, op: str, operand: Any, ctx: _Ctx, depth: int) -> tuple[Any, Any]:
        args = _operands(op, operand)
        return self._ev(args[0], ctx, depth, 0), self._ev(args[1], ctx, depth, 1)

    # -- operators: (operand, ctx, depth of the operand expressions) -> value

    def _op_var(self, operand: Any, ctx: _Ctx, depth: int) -> Any:
        if not isinstance(operand, str):
            raise _Fail("$var expects a path string")
        if "." in operand:
            parts = operand.split(".")
            value = get_path(_lookup(ctx, parts[0]), parts, 1)
        else:
            value = _lookup(ctx, operand)
        self._charge_value(value)
        return value

    def _op_eq(self, operand: Any, ctx: _Ctx, depth: int) -> bool:
        return strict_equals(*self._pair("$eq", operand, ctx, depth))

    def _op_ne(self, operand: Any, ctx: _Ctx, depth: int) -> bool:
        return not strict_equals(*self._pair("$ne", operand, ctx, depth))

    def _op_and(self, operand: Any, ctx: _Ctx, depth: int) -> bool:
        return all(truthy(self._ev(sub, ctx, depth, i)) for i, sub in enumerate(_operands("$and", operand)))

    def _op_or(self, operand: Any, ctx: _Ctx, depth: int) -> bool:
        return any(truthy(self._ev(sub, ctx, depth, i)) for i, sub in enumerate(_operands("$or", operand)))

    def _op_not(self, operand: Any, ctx: _Ctx, depth: int) -> bool:
        return not truthy(self._ev(operand, ctx, depth, None))

    def _op_if(self, operand: Any, ctx: _Ctx, depth: int) -> Any:
        args = _operands("$if", operand)
        if truthy(self._ev(args[0], ctx, depth, 0)):
            return self._ev(args[1], ctx, depth, 1)
        return self._ev(args[2], ctx, depth, 2) if len(args) == 3 else UNDEFINED

    def _op_concat(self, operand: Any, ctx: _Ctx, depth: int) -> str:
        parts = []
        for i, sub in enumerate(_operands("$concat", operand)):
            value = self._ev(sub, ctx, depth, i)
            if isinstance(value, str):
                parts.append(value)  # already charged when it was produced
            else:
                parts.append(text := self._str(value))
                self._charge(len(text))
        return "".join(parts)

    def _op_substring(self, operand: Any, ctx: _Ctx, depth: int) -> str:
        args = _operands("$substring", operand)
        value = self._ev(args[0], ctx, depth, 0)
        s = value if isinstance(value, str) else self._str(value)
        if s is not value:
            self._charge(len(s))
        size = len(s)
        start = self._clamp(self._ev(args[1], ctx, depth, 1), size)
        end = self._ev(args[2], ctx, depth, 2) if len(args) == 3 else UNDEFINED
        end = size if end is UNDEFINED else self._clamp(end, size)
        return s[start:end] if start <= end else s[end:start]

    def _clamp(self, v: Any, size: int) -> int:
        """JavaScript ToIntegerOrInfinity clamped to ``[0, size]`` (NaN is 0)."""
        if isinstance(v, list | tuple):
            v = self._str(v)
        n = to_number("[object Object]" if isinstance(v, Mapping) else v)
        if n != n or n <= 0:
            return 0
        return size if n >= size else int(n)

    def _op_length(self, operand: Any, ctx: _Ctx, depth: int) -> int:
        value = self._ev(operand, ctx, depth, None)
        if isinstance(value, str | list | dict):
            return len(value)
        raise _Fail(f"$length expects a string, list or object, got {js_type(value)}")

    def _op_get(self, operand: Any, ctx: _Ctx, depth: int) -> Any:
        args = _operands("$get", operand)
        obj = self._ev(args[0], ctx, depth, 0)
        path = self._ev(args[1], ctx, depth, 1)
        if isinstance(path, int) and not isinstance(path, bool):
            path = str(path)
        if not isinstance(path, str):
            raise _Fail(f"$get path must be a string, got {js_type(path)}", 1)
        value = get_path(obj, path.split("."), 0)
        if value is UNDEFINED and len(args) == 3:
            return self._ev(args[2], ctx, depth, 2)
        self._charge_value(value)
        return value

    def _op_has(self, operand: Any, ctx: _Ctx, depth: int) -> bool:
        obj, key = self._pair("$has", operand, ctx, depth)
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise _Fail(f"$has key must be a string or an integer, got {js_type(key)}", 1)
        if isinstance(obj, dict):
            return str(key) in obj
        if isinstance(obj, list):
            idx = key if isinstance(key, int) else array_index(key)
            return 0 <= idx < len(obj)
        return False

    def _array(self, op: str, operand: Any, ctx: _Ctx, depth: int) -> list[Any]:
        arr = self._ev(operand["array"], ctx, depth, "array")
        if not isinstance(arr, list):
            raise _Fail(f"{op} array must evaluate to a list, got {js_type(arr)}", "array")
        return arr

    def _op_map(self, operand: Any, ctx: _Ctx, depth: int) -> list[Any]:
        name, _ = _spec("$map", operand)
        arr = self._array("$map", operand, ctx, depth)
        body = operand["expr"]
        out = []
        for item in arr:
            value = self._ev(body, (name, item, ctx), depth, "expr")
            out.append(None if value is UNDEFINED else value)
        self._charge(len(out))
        return out

    def _op_filter(self, operand: Any, ctx: _Ctx, depth: int) -> list[Any]:
        name, _ = _spec("$filter", operand)
        arr = self._array("$filter", operand, ctx, depth)
        cond = operand["condition"]
        out = [item for item in arr if truthy(self._ev(cond, (name, item, ctx), depth, "condition"))]
        self._charge(len(out))
        return out

    def _op_reduce(self, operand: Any, ctx: _Ctx, depth: int) -> Any:
        name, acc_name = _spec("$reduce", operand)
        arr = self._array("$reduce", operand, ctx, depth)
        body = operand["expr"]
        items = iter(arr)
        if "initial" in operand:
            acc = self._ev(operand["initial"], ctx, depth, "initial")
        elif arr:
            acc = next(items)
        else:
            raise _Fail("$reduce of an empty list needs an 'initial' value")
        for item in items:
            acc = self._ev(body, (name, item, (acc_name, acc, ctx)), depth, "expr")
        return acc


def _misplaced(key: str) -> str:
    if key in _HANDLERS:
        return f"misplaced operator {key}: an operator object must have exactly one key"
    return f"unknown operator {key}"


_Handler: TypeAlias = Callable[[_Run, Any, _Ctx, int], Any]


def _relational(op: str, cmp: Callable[[Any, Any], Any]) -> _Handler:
    def handler(run: _Run, operand: Any, ctx: _Ctx, depth: int) -> bool:
        return bool(cmp(*run._rel(op, operand, ctx, depth)))

    return handler


_HANDLERS: Final[dict[str, _Handler]] = {
    "$var": _Run._op_var, "$eq": _Run._op_eq, "$ne": _Run._op_ne,
    "$gt": _relational("$gt", operator.gt), "$lt": _relational("$lt", operator.lt),
    "$gte": _relational("$gte", operator.ge), "$lte": _relational("$lte", operator.le),
    "$and": _Run._op_and, "$or": _Run._op_or, "$not": _Run._op_not, "$if": _Run._op_if,
    "$concat": _Run._op_concat, "$substring": _Run._op_substring, "$length": _Run._op_length,
    "$map": _Run._op_map, "$filter": _Run._op_filter, "$reduce": _Run._op_reduce,
    "$get": _Run._op_get, "$has": _Run._op_has,
}  # fmt: skip

#: Every operator name JSONLex understands.
OPERATORS: Final[frozenset[str]] = frozenset(_HANDLERS)


# ---------------------------------------------------------------- public API


def _limits(limits: JSONLexLimits | None) -> JSONLexLimits:
    if limits is None:
        return _DEFAULT_LIMITS
    if not isinstance(limits, JSONLexLimits):
        raise JSONLexError(f"limits must be a JSONLexLimits, got {type(limits).__name__}")
    return limits


def _guarded(limits: JSONLexLimits | None, step: Callable[[_Run], Any]) -> Any:
    """Run ``step`` on a fresh evaluator; turn every failure into a :class:`JSONLexError`."""
    try:
        return step(_Run(_limits(limits)))
    except JSONLexError:
        raise
    except _Fail as fail:
        raise JSONLexError(fail.reason, path=_format_path(fail.segs)) from fail.__cause__
    except Exception as exc:  # includes RecursionError and MemoryError-free surprises
        raise JSONLexError(_internal(exc)) from exc


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
    result = _guarded(limits, lambda run: run._top(body, context))
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
    _guarded(limits, lambda run: run._check(body, 0, None))
    if marked:
        return expr
    return {"__jsonlex": True, "expr": expr, "compiled": int(time.time() * 1000)}


#: Alias of :func:`compile` that does not shadow the builtin.
compile_expression = compile
