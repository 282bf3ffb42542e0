"""Every JSONLex operator, each declared once: name, operand shape, function and example.

``@operator(name, shape, example=...)`` puts the function in :data:`REGISTRY`, the
one table that evaluation and ``compile`` both read. Values follow JavaScript's
rules (:mod:`exprsn_ipc.jsonlex.jsvalues`) so results match the Node.js services.
"""

from __future__ import annotations

import operator as py_operator
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeVar

from exprsn_ipc.jsonlex.jsvalues import (
    UNDEFINED,
    array_index,
    get_path,
    js_type,
    strict_equals,
    to_number,
    truthy,
)
from exprsn_ipc.jsonlex.machine import (
    Arguments,
    Ctx,
    Evaluation,
    Fail,
    Loop,
    LoopOperand,
    OneExpression,
    Operator,
    OperatorFunction,
    PathOperand,
    Shape,
    lookup,
)

__all__ = ["REGISTRY", "operator"]

F = TypeVar("F", bound=OperatorFunction)

_DECLARED: dict[str, Operator] = {}

#: Every declared operator by name (read-only).
REGISTRY: Final[Mapping[str, Operator]] = MappingProxyType(_DECLARED)


def operator(name: str, shape: Shape, *, example: tuple[Any, dict[str, Any], Any]) -> Callable[[F], F]:
    """Declare ``name`` as an operator run by the decorated function."""

    def declare(function: F) -> F:
        if name in _DECLARED:
            raise ValueError(f"JSONLex operator {name} is declared twice")
        if not name.startswith("$"):
            raise ValueError(f"JSONLex operator names start with '$', got {name!r}")
        _DECLARED[name] = Operator(name, shape, function, example)
        return function

    return declare


PAIR: Final = Arguments(2, 2)
ANY_NUMBER: Final = Arguments(0, None)
OPTIONAL_THIRD: Final = Arguments(2, 3)


# ---------------------------------------------------------------- values and logic


@operator("$var", PathOperand(), example=("user.name", {"user": {"name": "Ada"}}, "Ada"))
def _var(run: Evaluation, path: str, ctx: Ctx, depth: int) -> Any:
    if "." in path:
        parts = path.split(".")
        value = get_path(lookup(ctx, parts[0]), parts, 1)
    else:
        value = lookup(ctx, path)
    run.charge_value(value)
    return value


@operator("$eq", PAIR, example=([{"$var": "n"}, 1], {"n": 1}, True))
def _eq(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> bool:
    return strict_equals(*run.pair(args, ctx, depth))


@operator("$ne", PAIR, example=([{"$var": "n"}, "1"], {"n": 1}, True))
def _ne(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> bool:
    return not strict_equals(*run.pair(args, ctx, depth))


def _relational(name: str, compare: Callable[[Any, Any], Any], example: tuple[Any, dict[str, Any], Any]) -> None:
    @operator(name, PAIR, example=example)
    def relational(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> bool:
        return bool(compare(*run.relation(args, ctx, depth)))


_relational("$gt", py_operator.gt, ([{"$var": "age"}, 17], {"age": 18}, True))
_relational("$lt", py_operator.lt, (["10", "9"], {}, True))  # strings compare as strings, as in JavaScript
_relational("$gte", py_operator.ge, ([{"$var": "age"}, 18], {"age": 18}, True))
_relational("$lte", py_operator.le, ([2, "10"], {}, True))  # a number and a string compare as numbers


@operator("$and", ANY_NUMBER, example=([True, {"$var": "ok"}], {"ok": 1}, True))
def _and(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> bool:
    return all(truthy(run.ev(sub, ctx, depth, i)) for i, sub in enumerate(args))


@operator("$or", ANY_NUMBER, example=([False, {"$var": "ok"}], {"ok": ""}, False))
def _or(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> bool:
    return any(truthy(run.ev(sub, ctx, depth, i)) for i, sub in enumerate(args))


@operator("$not", OneExpression(), example=({"$var": "banned"}, {"banned": False}, True))
def _not(run: Evaluation, operand: Any, ctx: Ctx, depth: int) -> bool:
    return not truthy(run.ev(operand, ctx, depth, None))


@operator("$if", OPTIONAL_THIRD, example=([{"$var": "vip"}, "gold", "basic"], {"vip": True}, "gold"))
def _if(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> Any:
    if truthy(run.ev(args[0], ctx, depth, 0)):
        return run.ev(args[1], ctx, depth, 1)
    return run.ev(args[2], ctx, depth, 2) if len(args) == 3 else UNDEFINED


# ---------------------------------------------------------------- strings and sizes


@operator("$concat", ANY_NUMBER, example=(["Hi ", {"$var": "name"}, 1], {"name": "Ada"}, "Hi Ada1"))
def _concat(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> str:
    parts = []
    for i, sub in enumerate(args):
        value = run.ev(sub, ctx, depth, i)
        if isinstance(value, str):
            parts.append(value)  # already charged when it was produced
        else:
            parts.append(text := run.to_string(value))
            run.charge(len(text))
    return "".join(parts)


@operator("$substring", OPTIONAL_THIRD, example=(["exprsn-ipc", 7], {}, "ipc"))
def _substring(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> str:
    value = run.ev(args[0], ctx, depth, 0)
    s = value if isinstance(value, str) else run.to_string(value)
    if s is not value:
        run.charge(len(s))
    size = len(s)
    start = _clamp(run, run.ev(args[1], ctx, depth, 1), size)
    end = run.ev(args[2], ctx, depth, 2) if len(args) == 3 else UNDEFINED
    end = size if end is UNDEFINED else _clamp(run, end, size)
    return s[start:end] if start <= end else s[end:start]


def _clamp(run: Evaluation, v: Any, size: int) -> int:
    """JavaScript ToIntegerOrInfinity clamped to ``[0, size]`` (NaN is 0)."""
    if isinstance(v, list | tuple):
        v = run.to_string(v)
    n = to_number("[object Object]" if isinstance(v, Mapping) else v)
    if n != n or n <= 0:
        return 0
    return size if n >= size else int(n)


@operator("$length", OneExpression(), example=({"$var": "tags"}, {"tags": ["a", "b"]}, 2))
def _length(run: Evaluation, operand: Any, ctx: Ctx, depth: int) -> int:
    value = run.ev(operand, ctx, depth, None)
    if isinstance(value, str | list | dict):
        return len(value)
    raise Fail(f"$length expects a string, list or object, got {js_type(value)}")


# ---------------------------------------------------------------- objects


@operator("$get", OPTIONAL_THIRD, example=([{"$var": "user"}, "address.city", "?"], {"user": {}}, "?"))
def _get(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> Any:
    obj = run.ev(args[0], ctx, depth, 0)
    path = run.ev(args[1], ctx, depth, 1)
    if isinstance(path, int) and not isinstance(path, bool):
        path = str(path)
    if not isinstance(path, str):
        raise Fail(f"$get path must be a string, got {js_type(path)}", 1)
    value = get_path(obj, path.split("."), 0)
    if value is UNDEFINED and len(args) == 3:
        return run.ev(args[2], ctx, depth, 2)
    run.charge_value(value)
    return value


@operator("$has", PAIR, example=([{"$var": "user"}, "email"], {"user": {"email": "a@b"}}, True))
def _has(run: Evaluation, args: list[Any], ctx: Ctx, depth: int) -> bool:
    obj, key = run.pair(args, ctx, depth)
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise Fail(f"$has key must be a string or an integer, got {js_type(key)}", 1)
    if isinstance(obj, dict):
        return str(key) in obj
    if isinstance(obj, list):
        idx = key if isinstance(key, int) else array_index(key)
        return 0 <= idx < len(obj)
    return False


# ---------------------------------------------------------------- lists


def _array(run: Evaluation, op: str, loop: LoopOperand, ctx: Ctx, depth: int) -> list[Any]:
    arr = run.ev(loop.spec["array"], ctx, depth, "array")
    if not isinstance(arr, list):
        raise Fail(f"{op} array must evaluate to a list, got {js_type(arr)}", "array")
    return arr


@operator(
    "$map",
    Loop(("array", "expr")),
    example=({"array": {"$var": "xs"}, "expr": {"$concat": ["#", {"$var": "item"}]}}, {"xs": [1, 2]}, ["#1", "#2"]),
)
def _map(run: Evaluation, loop: LoopOperand, ctx: Ctx, depth: int) -> list[Any]:
    arr = _array(run, "$map", loop, ctx, depth)
    body = loop.spec["expr"]
    out = []
    for item in arr:
        value = run.ev(body, (loop.item, item, ctx), depth, "expr")
        out.append(None if value is UNDEFINED else value)
    run.charge(len(out))
    return out


@operator(
    "$filter",
    Loop(("array", "condition")),
    example=({"array": [1, 5, 9], "condition": {"$gt": [{"$var": "item"}, 4]}}, {}, [5, 9]),
)
def _filter(run: Evaluation, loop: LoopOperand, ctx: Ctx, depth: int) -> list[Any]:
    arr = _array(run, "$filter", loop, ctx, depth)
    cond = loop.spec["condition"]
    out = [item for item in arr if truthy(run.ev(cond, (loop.item, item, ctx), depth, "condition"))]
    run.charge(len(out))
    return out


@operator(
    "$reduce",
    Loop(("array", "expr"), ("initial", "as", "accumulator"), accumulates=True),
    example=(
        {"array": ["a", "b"], "initial": ">", "expr": {"$concat": [{"$var": "acc"}, {"$var": "item"}]}},
        {},
        ">ab",
    ),
)
def _reduce(run: Evaluation, loop: LoopOperand, ctx: Ctx, depth: int) -> Any:
    arr = _array(run, "$reduce", loop, ctx, depth)
    body = loop.spec["expr"]
    items = iter(arr)
    if "initial" in loop.spec:
        acc = run.ev(loop.spec["initial"], ctx, depth, "initial")
    elif arr:
        acc = next(items)
    else:
        raise Fail("$reduce of an empty list needs an 'initial' value")
    for item in items:
        acc = run.ev(body, (loop.item, item, (loop.accumulator, acc, ctx)), depth, "expr")
    return acc
