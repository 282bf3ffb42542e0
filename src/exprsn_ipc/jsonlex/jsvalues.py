"""JavaScript value semantics for JSONLex (private; the public API is :mod:`exprsn_ipc.jsonlex.evaluator`).

``undefined``, ToBoolean (:func:`truthy`), ToNumber (:func:`to_number`),
Number::toString (:func:`number_to_string`), ``String()`` of primitives,
``===`` (:func:`strict_equals`), the keys behind relational comparison
(:func:`compare_keys`), ``typeof``-style names for error messages and
property access through own keys and array indexes (:func:`get_path`).
Everything here is pure and bounded by its input; the evaluator in
:mod:`exprsn_ipc.jsonlex.evaluator` adds the limits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "UNDEFINED",
    "Undefined",
    "array_index",
    "as_float",
    "compare_keys",
    "get_path",
    "js_type",
    "number_to_string",
    "scalar_to_string",
    "str_to_number",
    "strict_equals",
    "to_number",
    "truthy",
]


class Undefined:
    """JavaScript ``undefined``: falsy, and distinct from ``None`` (JSON ``null``)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __copy__(self) -> Undefined:
        return self

    def __deepcopy__(self, memo: Any) -> Undefined:
        return self

    def __repr__(self) -> str:
        return "UNDEFINED"


#: The internal value of JavaScript ``undefined`` (a missing variable, an ``$if``
#: without else). Never part of a result: ``evaluate`` returns ``None`` instead.
UNDEFINED: Final = Undefined()


_JS_WS: Final = (
    " \t\n\v\f\r\u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_DECIMAL_RE: Final = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_RADIX_RE: Final = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")
_E21: Final = 10**21


def truthy(v: Any) -> bool:
    """JavaScript ToBoolean."""
    if v is None or v is UNDEFINED or v is False:
        return False
    if v is True:
        return True
    if isinstance(v, str):
        return v != ""
    if isinstance(v, int):
        return v != 0
    if isinstance(v, float):
        return v == v and v != 0.0
    return True


def as_float(v: int | float) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def str_to_number(s: str) -> float:
    """JavaScript ToNumber of a string (``Number(" 12 ")`` is 12, ``"0x10"`` 16, ``"1_0"`` NaN)."""
    s = s.strip(_JS_WS)
    if not s:
        return 0.0
    if _DECIMAL_RE.fullmatch(s):
        return float(s)
    if _RADIX_RE.fullmatch(s):
        return as_float(int(s[2:], {"x": 16, "o": 8, "b": 2}[s[1].lower()]))
    return math.nan


def to_number(v: Any) -> float:
    """JavaScript ToNumber of a primitive (lists and objects go through ToPrimitive first)."""
    if v is None or v is False:
        return 0.0
    if v is True:
        return 1.0
    if isinstance(v, int | float):
        return as_float(v)
    if isinstance(v, str):
        return str_to_number(v)
    return math.nan


def number_to_string(x: float) -> str:
    """JavaScript Number::toString: shortest round-trip digits, JS exponent rules."""
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    mantissa, _, exp = repr(abs(x)).partition("e")
    int_part, _, frac = mantissa.partition(".")
    digits = int_part + frac
    n = len(int_part) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + ("e+" if e >= 0 else "e-") + str(abs(e))
    return "-" + out if x < 0 else out


def scalar_to_string(v: Any) -> str:
    """JavaScript String() of a non-container value."""
    if v is None:
        return "null"
    if v is UNDEFINED:
        return "undefined"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v) if -_E21 < v < _E21 else number_to_string(as_float(v))
    if isinstance(v, float):
        return number_to_string(v)
    return str(v)


def strict_equals(a: Any, b: Any) -> bool:
    """JavaScript ``===``: same type and value; containers only when identical."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float):
        return isinstance(b, int | float) and as_float(a) == as_float(b)
    if isinstance(a, str):
        return isinstance(b, str) and a == b
    return a is b


def compare_keys(a: Any, b: Any) -> tuple[Any, Any]:
    """Keys that Python orders like JavaScript ``<`` orders the primitives ``a`` and ``b``.

    Two strings compare by UTF-16 code units; anything else compares as numbers
    (ToNumber). Lists and objects must be converted to strings first.
    """
    if isinstance(a, str) and isinstance(b, str):
        if a.isascii() and b.isascii():
            return a, b
        return a.encode("utf-16-be", "surrogatepass"), b.encode("utf-16-be", "surrogatepass")
    return to_number(a), to_number(b)


def array_index(seg: str) -> int:
    """A canonical decimal array index ("0", "12"), else -1."""
    if seg.isascii() and seg.isdigit() and len(seg) <= 18 and (len(seg) == 1 or seg[0] != "0"):
        return int(seg)
    return -1


def get_path(value: Any, parts: list[str], start: int) -> Any:
    """Follow path segments through own keys of objects and indexes of lists only."""
    for i in range(start, len(parts)):
        seg = parts[i]
        if isinstance(value, dict):
            value = value.get(seg, UNDEFINED)
        elif isinstance(value, list):
            idx = array_index(seg)
            if idx < 0 or idx >= len(value):
                return UNDEFINED
            value = value[idx]
        elif isinstance(value, Mapping):
            value = value.get(seg, UNDEFINED)
        else:
            return UNDEFINED
    return value


_JS_TYPES: Final = (
    (bool, "boolean"),
    (int | float, "number"),
    (str, "string"),
    (list | tuple, "array"),
    (Mapping, "object"),
)


def js_type(v: Any) -> str:
    """The JavaScript type name of ``v`` for error messages (``array`` for lists, ``null``...)."""
    if v is None or v is UNDEFINED:
        return "null" if v is None else "undefined"
    return next((name for cls, name in _JS_TYPES if isinstance(v, cls)), type(v).__name__)
