"""Equality of JSON values, as JSON (and the original's JavaScript) defines it.

Python's ``==`` is not JSON equality: ``True == 1`` and ``False == 0`` hold in
Python, while in JSON (and in JavaScript, ``1 !== true``) a boolean is never a
number. The envelope binding (DESIGN fix 3) must compare the data a token was
signed over with the data an envelope carries by JSON's rules, or a token signed
over ``{"admin": true}`` would vouch for ``{"admin": 1}``.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["json_equal"]


def json_equal(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same JSON value.

    Booleans equal only booleans, ``null`` only ``null``; numbers compare as
    numbers (``1`` equals ``1.0``); arrays compare in order; objects compare by
    their keys and values, in any key order. Values JSON cannot hold are unequal
    to everything.
    """
    try:
        if a != b:
            return False
        # Equal in Python; the usual case is two decodings of the same JSON text, which
        # serialise identically. Only when they do not (key order, 1 vs 1.0, true vs 1)
        # is the structural walk needed.
        if orjson.dumps(a) == orjson.dumps(b):
            return True
    except (RecursionError, TypeError, orjson.JSONEncodeError):
        pass  # nested deeper than either C implementation goes: the walk has no depth limit
    return _walk_equal(a, b)


def _walk_equal(a: Any, b: Any) -> bool:
    # Iterative, so a deeply nested payload cannot exhaust the stack.
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if isinstance(x, bool) or isinstance(y, bool) or x is None or y is None:
            if not (x is y or (type(x) is bool and type(y) is bool and x == y)):
                return False
        elif (isinstance(x, int | float) and isinstance(y, int | float)) or (isinstance(x, str) and isinstance(y, str)):
            if x != y:
                return False
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return False
            pending.extend((x[key], y[key]) for key in x)
        else:
            return False
    return True
