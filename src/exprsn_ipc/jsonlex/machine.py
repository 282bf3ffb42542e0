"""The JSONLex machine: limits, evaluation state, error paths and operand shapes.

An operator is declared once (:mod:`exprsn_ipc.jsonlex.operators`) with its name, the
shape of its operand and its function. The machine reads that one table both to
evaluate (:meth:`Evaluation.ev`) and to validate (:meth:`Evaluation.validate`, used by
``compile``), so the two can never disagree about which operators exist or what
their operands look like.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol, TypeAlias

from exprsn_ipc.jsonlex.jsvalues import UNDEFINED, compare_keys, scalar_to_string

__all__ = [
    "Arguments",
    "Ctx",
    "Evaluation",
    "Fail",
    "JSONLexLimits",
    "Loop",
    "LoopOperand",
    "OneExpression",
    "Operator",
    "OperatorFunction",
    "PathOperand",
    "Shape",
    "format_path",
    "internal_error",
    "lookup",
]


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


#: Where a name is looked up: the context, or a loop variable bound in front of it.
Ctx: TypeAlias = "dict[str, Any] | tuple[str, Any, Ctx]"


class Fail(Exception):
    """Internal failure; ``segs`` collects the path innermost-first while unwinding."""

    def __init__(self, reason: str, *segs: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segs: list[Any] = list(segs)


_IDENT_RE: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*", re.ASCII)


def lookup(ctx: Ctx, name: str) -> Any:
    while isinstance(ctx, tuple):
        if ctx[0] == name:
            return ctx[1]
        ctx = ctx[2]
    return ctx.get(name, UNDEFINED)


def format_path(segs: list[Any]) -> str:
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
    if isinstance(exc, Fail):
        if seg is not None:
            exc.segs.append(seg)
        raise exc
    raise Fail(internal_error(exc), *(() if seg is None else (seg,))) from exc


def internal_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "expression too deep (Python recursion limit reached; lower max_depth)"
    return f"internal error: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- operand shapes


class Shape(Protocol):
    """How an operator's operand is checked, before it runs and when it is compiled."""

    def prepare(self, op: str, operand: Any) -> Any:
        """The operand as the operator function receives it; raises :class:`Fail` when malformed."""
        ...

    def parts(self, op: str, operand: Any) -> Iterable[tuple[Any, Any]]:
        """``(path segment, sub-expression)`` pairs to validate; raises :class:`Fail` when malformed."""
        ...


@dataclass(frozen=True, slots=True)
class PathOperand:
    """A dotted path string (``$var``): nothing in it is evaluated."""

    def prepare(self, op: str, operand: Any) -> str:
        if not isinstance(operand, str):
            raise Fail(f"{op} expects a path string")
        return operand

    def parts(self, op: str, operand: Any) -> Iterable[tuple[Any, Any]]:
        self.prepare(op, operand)
        return ()


@dataclass(frozen=True, slots=True)
class OneExpression:
    """A single expression (``$not``, ``$length``)."""

    def prepare(self, op: str, operand: Any) -> Any:
        return operand

    def parts(self, op: str, operand: Any) -> Iterable[tuple[Any, Any]]:
        return ((None, operand),)


@dataclass(frozen=True, slots=True)
class Arguments:
    """A list of ``least`` to ``most`` expressions (``most`` None: any number)."""

    least: int
    most: int | None

    def prepare(self, op: str, operand: Any) -> list[Any]:
        lo, hi = self.least, self.most
        if isinstance(operand, list) and len(operand) >= lo and (hi is None or len(operand) <= hi):
            return operand
        want = f"{lo} " if lo == hi else f"{lo} or {hi} " if hi is not None else ""
        raise Fail(f"{op} expects a list of {want}expressions")

    def parts(self, op: str, operand: Any) -> Iterable[tuple[Any, Any]]:
        return enumerate(self.prepare(op, operand))


@dataclass(frozen=True, slots=True)
class LoopOperand:
    """A checked ``$map``/``$filter``/``$reduce`` object and the variable names it binds."""

    spec: dict[str, Any]
    item: str
    accumulator: str


@dataclass(frozen=True, slots=True)
class Loop:
    """An object with ``required`` and ``optional`` keys that binds an item (and an accumulator)."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ("as",)
    accumulates: bool = False

    def prepare(self, op: str, operand: Any) -> LoopOperand:
        if not isinstance(operand, dict):
            raise Fail(f"{op} expects an object with keys {', '.join(self.required)}")
        for key in operand:
            if key not in self.required and key not in self.optional:
                raise Fail(f"unexpected key {key!r} in {op}", key)
        for key in self.required:
            if key not in operand:
                raise Fail(f"{op} is missing {key!r}")
        item = _variable(operand, "as", "item")
        if not self.accumulates:
            return LoopOperand(operand, item, "")
        acc = _variable(operand, "accumulator", "acc")
        if acc == item:
            raise Fail(f"{op} 'as' and 'accumulator' must differ")
        return LoopOperand(operand, item, acc)

    def parts(self, op: str, operand: Any) -> Iterable[tuple[Any, Any]]:
        spec = self.prepare(op, operand).spec
        return [(key, spec[key]) for key in ("array", "initial", "expr", "condition") if key in spec]


def _variable(spec: dict[Any, Any], key: str, default: str) -> str:
    name = spec.get(key, default)
    if not isinstance(name, str) or not name or "." in name:
        raise Fail(f"{key!r} must be a non-empty variable name without '.'", key)
    return name


#: ``(evaluation, prepared operand, context, depth of the operand's expressions) -> value``.
OperatorFunction: TypeAlias = "Callable[[Evaluation, Any, Ctx, int], Any]"


@dataclass(frozen=True, slots=True)
class Operator:
    """One JSONLex operator: everything about it in one declaration.

    ``example`` is ``(operand, context, result)``: it documents the operator and the
    test suite evaluates and compiles it for every declared operator.
    """

    name: str
    shape: Shape
    run: OperatorFunction
    example: tuple[Any, dict[str, Any], Any]


class Evaluation:
    """State of one evaluation or validation: the operators, limit counters and a size cache.

    Operator functions (:mod:`exprsn_ipc.jsonlex.operators`) call back into it to evaluate
    their operands (:meth:`ev`) and to charge what they produce against the limits.
    """

    __slots__ = ("max_depth", "max_nodes", "max_output", "operators", "out", "sizes", "steps")

    def __init__(self, limits: JSONLexLimits, operators: Mapping[str, Operator]) -> None:
        self.operators = operators
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
            raise Fail(f"maximum depth of {self.max_depth} exceeded (max_depth)")
        raise Fail(f"node limit of {self.max_nodes} exceeded (max_nodes)")

    def charge(self, n: int) -> None:
        self.out += n
        if self.out > self.max_output:
            raise Fail(f"output limit of {self.max_output} exceeded (max_output)")

    def charge_value(self, v: Any) -> None:
        """Charge a value that was not built here (read from the context or a sub-object)."""
        if isinstance(v, str):
            self.charge(len(v))
        elif isinstance(v, list | tuple | dict):
            hit = self.sizes.get(id(v))
            if hit is None or hit[0] is not v:
                hit = (v, self._deep_size(v))
                self.sizes[id(v)] = hit
            self.charge(hit[1])

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
                self.charge(total)  # raises
        return total

    def ev(self, node: Any, ctx: Ctx, depth: int, seg: Any) -> Any:
        try:
            self.steps += 1
            if self.steps > self.max_nodes or depth > self.max_depth:
                self._over(depth)
            if isinstance(node, str):
                self.charge(len(node))
                return node
            if isinstance(node, dict):
                if not node:
                    return {}
                first = next(iter(node))
                if isinstance(first, str) and first[:1] == "$":
                    if len(node) != 1:
                        raise Fail("operator object must have exactly one key")
                    declared = self.operators.get(first)
                    if declared is None:
                        raise Fail(f"unknown operator {first}", first)
                    try:
                        operand = declared.shape.prepare(first, node[first])
                        return declared.run(self, operand, ctx, depth + 1)
                    except Exception as exc:
                        _reraise(exc, first)
                out: dict[Any, Any] = {}
                size = 0
                for key, sub in node.items():
                    if isinstance(key, str):
                        if key[:1] == "$":
                            raise Fail(self._misplaced(key), key)
                        size += len(key)
                    value = self.ev(sub, ctx, depth + 1, key)
                    if value is not UNDEFINED:
                        out[key] = value
                self.charge(size + len(out))
                return out
            if isinstance(node, list):
                items = []
                for i, sub in enumerate(node):
                    value = self.ev(sub, ctx, depth + 1, i)
                    items.append(None if value is UNDEFINED else value)
                self.charge(len(items))
                return items
            return node
        except Exception as exc:
            _reraise(exc, seg)

    def evaluate_body(self, body: Any, context: Mapping[str, Any] | None) -> Any:
        """Evaluate an expression body against ``context``."""
        base = {} if context is None else context if isinstance(context, dict) else dict(context)
        return self.ev(body, base, 0, None)

    def validate(self, body: Any) -> None:
        """Validate the whole tree (every branch) without evaluating it."""
        self._check(body, 0, None)

    def _check(self, node: Any, depth: int, seg: Any) -> None:
        try:
            self._tick(depth)
            if isinstance(node, list):
                for i, sub in enumerate(node):
                    self._check(sub, depth + 1, i)
            elif isinstance(node, dict) and node:
                first = next(iter(node))
                if isinstance(first, str) and first[:1] == "$":
                    if len(node) != 1:
                        raise Fail("operator object must have exactly one key")
                    declared = self.operators.get(first)
                    if declared is None:
                        raise Fail(f"unknown operator {first}", first)
                    try:
                        for part, sub in declared.shape.parts(first, node[first]):
                            self._check(sub, depth + 1, part)
                    except Exception as exc:
                        _reraise(exc, first)
                    return
                for key, sub in node.items():
                    if isinstance(key, str) and key[:1] == "$":
                        raise Fail(self._misplaced(key), key)
                    self._check(sub, depth + 1, key)
        except Exception as exc:
            _reraise(exc, seg)

    def _misplaced(self, key: str) -> str:
        if key in self.operators:
            return f"misplaced operator {key}: an operator object must have exactly one key"
        return f"unknown operator {key}"

    # -- conversions needing limits

    def to_string(self, v: Any, depth: int = 0) -> str:
        """JavaScript String(): lists join their elements with "," (null/undefined as "")."""
        if isinstance(v, str):
            return v
        if isinstance(v, list | tuple):
            if depth >= self.max_depth:
                raise Fail(f"maximum depth of {self.max_depth} exceeded (max_depth)")
            s = ",".join("" if x is None or x is UNDEFINED else self.to_string(x, depth + 1) for x in v)
            if len(s) > self.max_output:
                raise Fail(f"output limit of {self.max_output} exceeded (max_output)")
            return s
        if isinstance(v, Mapping):
            return "[object Object]"
        return scalar_to_string(v)

    def relation(self, args: list[Any], ctx: Ctx, depth: int) -> tuple[Any, Any]:
        """Evaluate both sides and map them to keys that Python compares like JS ``<``."""
        a, b = self.pair(args, ctx, depth)
        if isinstance(a, list | tuple):
            a = self.to_string(a)
        elif isinstance(a, Mapping):
            a = "[object Object]"
        if isinstance(b, list | tuple):
            b = self.to_string(b)
        elif isinstance(b, Mapping):
            b = "[object Object]"
        return compare_keys(a, b)

    def pair(self, args: list[Any], ctx: Ctx, depth: int) -> tuple[Any, Any]:
        return self.ev(args[0], ctx, depth, 0), self.ev(args[1], ctx, depth, 1)
