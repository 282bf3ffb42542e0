"""Tests of exprsn_ipc.jsonlex.evaluator: operators, JavaScript semantics, error paths, limits."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import FrozenInstanceError
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exprsn_ipc.errors import JSONLexError
from exprsn_ipc.jsonlex.evaluator import (
    OPERATORS,
    UNDEFINED,
    JSONLexLimits,
    compile,
    compile_expression,
    evaluate,
    is_jsonlex,
)

NAN = float("nan")
INF = float("inf")


def ev(expr: Any, ctx: dict[str, Any] | None = None, **kw: Any) -> Any:
    return evaluate({"__jsonlex": True, "expr": expr}, ctx, **kw)


def err(expr: Any, ctx: dict[str, Any] | None = None, **kw: Any) -> JSONLexError:
    with pytest.raises(JSONLexError) as info:
        ev(expr, ctx, **kw)
    return info.value


def var(path: str) -> dict[str, str]:
    return {"$var": path}


# ---------------------------------------------------------------- documented examples


def test_migration_guide_example() -> None:
    expression = {
        "__jsonlex": True,
        "expr": {
            "fullName": {"$concat": [{"$var": "firstName"}, " ", {"$var": "lastName"}]},
            "isActive": {"$eq": [{"$var": "status"}, "active"]},
        },
    }
    context = {"firstName": "John", "lastName": "Doe", "status": "active"}
    assert evaluate(expression, context) == {"fullName": "John Doe", "isActive": True}


def test_original_end_to_end_example() -> None:
    expression = {
        "__jsonlex": True,
        "expr": {
            "fullName": {"$concat": [{"$var": "firstName"}, " ", {"$var": "lastName"}]},
            "age": {"$var": "age"},
            "isAdult": {"$gte": [{"$var": "age"}, 18]},
        },
    }
    context = {"firstName": "John", "lastName": "Doe", "age": 25}
    assert evaluate(expression, context) == {"fullName": "John Doe", "age": 25, "isAdult": True}
    assert evaluate(compile(expression["expr"]), context) == {"fullName": "John Doe", "age": 25, "isAdult": True}


def test_docs_collections_example() -> None:
    expr = {
        "adults": {"$filter": {"array": var("people"), "as": "p", "condition": {"$gte": [var("p.age"), 18]}}},
        "names": {"$map": {"array": var("people"), "expr": var("item.name")}},
        "csv": {"$reduce": {"array": var("people"), "initial": "",
                            "expr": {"$concat": [var("acc"), var("item.name"), ";"]}}},
    }  # fmt: skip
    people = [{"name": "A", "age": 30}, {"name": "B", "age": 12}]
    assert evaluate(compile(expr), {"people": people}) == {
        "adults": [{"name": "A", "age": 30}], "names": ["A", "B"], "csv": "A;B;",
    }  # fmt: skip


# ---------------------------------------------------------------- marker, echo, compile


@pytest.mark.parametrize(
    "value",
    [None, 0, "", "text", 5, [1, {"$var": "a"}], {"a": {"$var": "a"}}, {"__jsonlex": False, "expr": 1},
     {"__jsonlex": 0, "expr": 1}, {"__jsonlex": "", "expr": 1}, {}],
)  # fmt: skip
def test_unmarked_input_is_echoed(value: Any) -> None:
    assert evaluate(value, {"a": 1}) is value


def test_truthy_marker_is_enough_and_missing_expr_is_none() -> None:
    assert evaluate({"__jsonlex": "yes", "expr": var("a")}, {"a": 1}) == 1
    assert evaluate({"__jsonlex": 1, "expr": var("a")}, {"a": 2}) == 2
    assert evaluate({"__jsonlex": True}) is None
    assert evaluate({"__jsonlex": True, "expr": var("a")}) is None  # default context is {}


def test_literals_and_containers() -> None:
    assert ev("$var") == "$var"  # strings are always literals, no "$field" shorthand
    assert ev(3.5) == 3.5
    assert ev(None) is None
    assert ev({}) == {}
    assert ev([1, "a", [var("a")]], {"a": 7}) == [1, "a", [7]]
    assert ev({"a": {"b": var("x")}, "c": [var("y")]}, {"x": 1}) == {"a": {"b": 1}, "c": [None]}
    nested = {"__jsonlex": True, "expr": var("x")}
    assert ev({"inner": nested}, {"x": 5}) == {"inner": {"__jsonlex": True, "expr": 5}}


def test_is_jsonlex() -> None:
    assert is_jsonlex({"__jsonlex": True, "expr": 1})
    assert not is_jsonlex({"__jsonlex": 1, "expr": 1})
    assert not is_jsonlex({"__jsonlex": "true"})
    assert not is_jsonlex([{"__jsonlex": True}])
    assert not is_jsonlex(None)


def test_compile_shapes() -> None:
    assert compile(None) is None
    assert compile("x") == "x"
    lst = [1, 2]
    assert compile(lst) is lst
    marked = {"__jsonlex": True, "expr": var("a")}
    assert compile(marked) is marked
    before = int(time.time() * 1000)
    body = {"a": var("a")}
    out = compile(body)
    assert set(out) == {"__jsonlex", "expr", "compiled"}
    assert out["__jsonlex"] is True and out["expr"] is body
    assert isinstance(out["compiled"], int) and before <= out["compiled"] <= int(time.time() * 1000) + 1
    assert is_jsonlex(out)
    assert compile_expression is compile
    assert compile({"__jsonlex": 0, "x": 1})["expr"] == {"__jsonlex": 0, "x": 1}


def test_compile_validates_every_branch() -> None:
    lazy = {"$if": [True, 1, {"$nope": 1}]}
    assert ev(lazy) == 1  # evaluation is lazy
    with pytest.raises(JSONLexError) as info:
        compile(lazy)
    assert info.value.path == "$.$if[2].$nope"
    with pytest.raises(JSONLexError) as info:
        compile({"__jsonlex": True, "expr": {"x": {"$var": 3}}})
    assert info.value.path == "$.x.$var"
    with pytest.raises(JSONLexError) as info:
        compile({"a": {"$map": {"array": [], "expr": 1, "as": "a.b"}}})
    assert info.value.path == "$.a.$map.as"
    with pytest.raises(JSONLexError, match="max_nodes"):
        compile({"x": list(range(20))}, limits=JSONLexLimits(max_nodes=10))
    ok = {"$reduce": {"array": [1], "initial": 0, "expr": {"$concat": [var("acc"), var("item")]}}}
    assert compile(ok)["expr"] is ok


# ---------------------------------------------------------------- truthiness, logic


@pytest.mark.parametrize(
    ("value", "truthy"),
    [(False, False), (None, False), (0, False), (0.0, False), (-0.0, False), (NAN, False), ("", False),
     (True, True), (1, True), (-1, True), (0.5, True), ("0", True), (" ", True), ("false", True),
     ([], True), ({}, True), ([0], True), (INF, True)],
)  # fmt: skip
def test_truthiness(value: Any, truthy: bool) -> None:
    assert ev({"$not": var("v")}, {"v": value}) is (not truthy)
    assert ev({"$if": [var("v"), "yes", "no"]}, {"v": value}) == ("yes" if truthy else "no")
    assert ev({"$and": [var("v")]}, {"v": value}) is truthy
    assert ev({"$or": [var("v")]}, {"v": value}) is truthy


def test_undefined_is_falsy() -> None:
    assert ev({"$not": var("missing")}) is True


def test_and_or_return_booleans_and_short_circuit() -> None:
    assert ev({"$and": [1, "x"]}) is True
    assert ev({"$and": [1, 0, "x"]}) is False
    assert ev({"$or": [0, "x"]}) is True
    assert ev({"$or": [0, ""]}) is False
    assert ev({"$and": []}) is True
    assert ev({"$or": []}) is False
    assert ev({"$and": [False, {"$nope": 1}]}) is False
    assert ev({"$or": [True, {"$nope": 1}]}) is True
    assert err({"$and": [True, {"$nope": 1}]}).path == "$.$and[1].$nope"


def test_if() -> None:
    assert ev({"$if": [True, 1, 2]}) == 1
    assert ev({"$if": [0, 1, 2]}) == 2
    assert ev({"$if": [False, 1]}) is None
    assert ev({"a": {"$if": [False, 1]}, "b": 2}) == {"b": 2}
    assert ev([{"$if": [False, 1]}]) == [None]
    assert ev({"$if": [False, {"$nope": 1}, "else"]}) == "else"
    assert err({"$if": [True]}).path == "$.$if"
    assert "2 or 3" in err({"$if": [True, 1, 2, 3]}).reason
    assert err({"$if": True}).path == "$.$if"


# ---------------------------------------------------------------- $var


CTX = {
    "user": {"name": "Ann", "address": {"city": "Oslo"}, "tags": ["a", "b"]},
    "items": [{"name": "x"}, {"name": "y"}],
    "s": "abc",
    "zero": 0,
    "nil": None,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [("user.name", "Ann"), ("user.address.city", "Oslo"), ("items.1.name", "y"), ("user.tags.0", "a"),
     ("zero", 0), ("nil", None), ("missing", None), ("missing.deeper", None), ("nil.x", None),
     ("items.2", None), ("items.-1", None), ("items.01", None), ("items.1e0", None), ("items. 1", None),
     ("items.+1", None), ("s.0", None), ("user.name.0", None), ("", None), ("user..name", None),
     ("constructor", None), ("__class__", None), ("__dict__", None), ("user.constructor", None),
     ("user.__class__", None), ("user.__dict__", None), ("user.keys", None), ("items.length", None),
     ("s.length", None), ("user.tags.length", None), ("items.__len__", None), ("toString", None)],
)  # fmt: skip
def test_var_paths_reach_only_own_keys(path: str, expected: Any) -> None:
    assert ev(var(path), CTX) == expected


def test_var_returns_context_values_and_accepts_mappings() -> None:
    assert ev(var("user"), CTX) is CTX["user"]
    ctx = MappingProxyType({"m": MappingProxyType({"k": 1})})
    assert evaluate({"__jsonlex": True, "expr": var("m.k")}, ctx) == 1
    assert evaluate({"__jsonlex": True, "expr": var("m.get")}, ctx) is None


@pytest.mark.parametrize("bad", [5, None, ["a"], {"x": 1}, True])
def test_var_needs_a_string_path(bad: Any) -> None:
    e = err({"v": {"$var": bad}})
    assert e.path == "$.v.$var"
    assert "path string" in e.reason


# ---------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [(1, 1, True), (1, 1.0, True), (0, -0.0, True), (1, True, False), (0, False, False), (True, True, True),
     (NAN, NAN, False), ("a", "a", True), ("1", 1, False), (None, None, True), ("", 0, False),
     (2**53, 2**53 + 1, True), (10**400, INF, True), ([1], [1], False), ({}, {}, False), ("", None, False)],
)  # fmt: skip
def test_strict_equality(a: Any, b: Any, equal: bool) -> None:
    assert ev({"$eq": [var("a"), var("b")]}, {"a": a, "b": b}) is equal
    assert ev({"$ne": [var("a"), var("b")]}, {"a": a, "b": b}) is (not equal)


def test_equality_undefined_and_identity() -> None:
    assert ev({"$eq": [var("missing"), var("other")]}) is True
    assert ev({"$eq": [var("nil"), var("missing")]}, {"nil": None}) is False
    assert ev({"$eq": [var("user"), var("user")]}, CTX) is True
    assert ev({"$eq": [var("user.tags"), var("user.tags")]}, CTX) is True
    assert ev({"$eq": [[1], [1]]}) is False
    assert ev({"$eq": [float("nan"), float("nan")]}) is False
    assert ev({"$eq": [var("n"), var("n")]}, {"n": NAN}) is False
    assert err({"$eq": [1]}).path == "$.$eq"
    assert err({"x": {"$ne": [1, 2, 3]}}).path == "$.x.$ne"
    assert err({"$eq": {"a": 1}}).reason == "$eq expects a list of 2 expressions"


# ---------------------------------------------------------------- relational


@pytest.mark.parametrize(
    ("a", "b", "gt", "lt", "gte", "lte"),
    [(2, 1, True, False, True, False), (1, 1.0, False, False, True, True), ("b", "a", True, False, True, False),
     ("10", "9", False, True, False, True), ("10", 9, True, False, True, False), ("B", "a", False, True, False, True),
     ("\uffff", "\U00010000", True, False, True, False), ("abc", 1, False, False, False, False),
     (None, 0, False, False, True, True), (True, 0, True, False, True, False), ([], 0, False, False, True, True),
     ([5], 4, True, False, True, False), ([1, 2], 0, False, False, False, False), ({}, 0, False, False, False, False),
     ([10], "9", False, True, False, True), (" 12 ", 11, True, False, True, False),
     ("0x10", 15, True, False, True, False),
     ("1_0", 0, False, False, False, False), ("Infinity", 1e308, True, False, True, False),
     ("inf", 0, False, False, False, False), ("", 1, False, True, False, True), (NAN, NAN, False, False, False, False),
     (10**400, 1e308, True, False, True, False), ("1e3", 999, True, False, True, False),
     (".5", 0, True, False, True, False)],
)  # fmt: skip
def test_relational(a: Any, b: Any, gt: bool, lt: bool, gte: bool, lte: bool) -> None:
    ctx = {"a": a, "b": b}
    got = [ev({op: [var("a"), var("b")]}, ctx) for op in ("$gt", "$lt", "$gte", "$lte")]
    assert got == [gt, lt, gte, lte]


def test_relational_with_undefined() -> None:
    for op in ("$gt", "$lt", "$gte", "$lte"):
        assert ev({op: [var("missing"), 0]}) is False
        assert ev({op: [0, var("missing")]}) is False
    assert err({"isAdult": {"$gte": [1, {"$var": "a", "x": 1}]}}).path == "$.isAdult.$gte[1]"


# ---------------------------------------------------------------- strings


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "null"), (True, "true"), (False, "false"), (1, "1"), (-7, "-7"), (1.0, "1"), (1.5, "1.5"),
     (-0.0, "0"), (NAN, "NaN"), (INF, "Infinity"), (-INF, "-Infinity"), (1e21, "1e+21"),
     (1e20, "100000000000000000000"),
     (1e-7, "1e-7"), (1e-6, "0.000001"), (123e-20, "1.23e-18"), (0.1 + 0.2, "0.30000000000000004"),
     (2.0**60, "1152921504606847000"), (10**21, "1e+21"), (10**400, "Infinity"), (-(10**21), "-1e+21"),
     ([1, [2, 3], None], "1,2,3,"), ([], ""), ([None], ""), ({"a": 1}, "[object Object]"), ("x", "x"),
     ([{"a": 1}, True, 1.5], "[object Object],true,1.5")],
)  # fmt: skip
def test_concat_uses_js_string_conversion(value: Any, text: str) -> None:
    assert ev({"$concat": [var("v")]}, {"v": value}) == text
    assert ev({"$concat": ["<", var("v"), ">"]}, {"v": value}) == f"<{text}>"


def test_concat_of_undefined_and_empty() -> None:
    assert ev({"$concat": [var("missing")]}) == "undefined"
    assert ev({"$concat": []}) == ""
    assert err({"$concat": "abc"}).path == "$.$concat"


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["hello", 1, 3], "el"), (["hello", 3, 1], "el"), (["hello", -2, 2], "he"), (["hello", 2], "llo"),
     (["hello", NAN, 2], "he"), (["hello", 1, 100], "ello"), ([12345, 1, 3], "23"), ([None, 0, 2], "nu"),
     (["hello", "1", "3"], "el"), (["hello", 1.7, 3.9], "el"), (["hello", var("missing"), 2], "he"),
     (["hello", 2, var("missing")], "llo"), (["hello", INF, 0], "hello"), (["hello", [2], None], "he"),
     (["hello", "x", 2], "he")],
)  # fmt: skip
def test_substring(args: list[Any], expected: str) -> None:
    assert ev({"$substring": args}) == expected


def test_substring_shape() -> None:
    assert err({"$substring": ["a"]}).path == "$.$substring"
    assert err({"$substring": ["a", 1, 2, 3]}).path == "$.$substring"


def test_length() -> None:
    assert ev({"$length": "hello"}) == 5
    assert ev({"$length": "h\u00e9llo"}) == 5
    assert ev({"$length": "\U0001f600"}) == 1  # code points, not UTF-16 units (documented)
    assert ev({"$length": [1, 2, 3]}) == 3
    assert ev({"$length": var("user")}, CTX) == 3
    assert ev({"$length": {}}) == 0
    for bad in (5, None, True, var("missing")):
        e = err({"x": {"$length": bad}})
        assert e.path == "$.x.$length"


# ---------------------------------------------------------------- $map / $filter / $reduce


def test_map_and_filter() -> None:
    ctx = {"nums": [1, 2, 3, 4], "item": "outer"}
    assert ev({"$map": {"array": var("nums"), "expr": {"$gt": [var("item"), 2]}}}, ctx) == [False, False, True, True]
    assert ev({"$map": {"array": var("nums"), "as": "n", "expr": [var("n"), var("item")]}}, ctx) == [
        [1, "outer"], [2, "outer"], [3, "outer"], [4, "outer"],
    ]  # fmt: skip
    assert ev({"$filter": {"array": var("nums"), "condition": {"$gt": [var("item"), 2]}}}, ctx) == [3, 4]
    assert ev({"$filter": {"array": [0, "", "a", None, 1], "as": "v", "condition": var("v")}}) == ["a", 1]
    assert ev({"$map": {"array": [1, 2], "expr": var("missing")}}) == [None, None]
    nested = {
        "$map": {"array": [1, 2], "as": "x",
                 "expr": {"$map": {"array": [10, 20], "as": "y", "expr": {"$concat": [var("x"), "-", var("y")]}}}},
    }  # fmt: skip
    assert ev(nested) == [["1-10", "1-20"], ["2-10", "2-20"]]
    assert ev({"$map": {"array": [], "expr": {"$nope": 1}}}) == []


def test_map_errors() -> None:
    assert err({"a b": {"$map": {"array": 5, "expr": 1}}}).path == '$["a b"].$map.array'
    assert err({"x": {"$map": {"array": [1], "expr": {"$nope": 1}}}}).path == "$.x.$map.expr.$nope"
    assert err({"x": {"$filter": {"array": [1], "condition": {"$eq": 1}}}}).path == "$.x.$filter.condition.$eq"
    assert err({"x": {"$map": {"array": [], "expr": 1, "bogus": 1}}}).path == "$.x.$map.bogus"
    assert err({"$map": {"array": []}}).reason == "$map is missing 'expr'"
    assert err({"$map": [1, 2]}).path == "$.$map"
    assert err({"$map": {"array": [], "expr": 1, "as": ""}}).path == "$.$map.as"
    assert err({"$filter": {"array": [], "expr": 1}}).path == "$.$filter.expr"


def test_reduce() -> None:
    total = {"$reduce": {"array": var("nums"), "initial": "", "expr": {"$concat": [var("acc"), var("item")]}}}
    assert ev(total, {"nums": [1, 2, 3]}) == "123"
    named = {"$reduce": {"array": [1, 2, 3], "as": "x", "accumulator": "s", "initial": 0, "expr": {"$if": [
        {"$gt": [var("x"), var("s")]}, var("x"), var("s")]}}}  # fmt: skip
    assert ev(named) == 3
    no_initial = {"$reduce": {"array": ["a", "b", "c"], "expr": {"$concat": [var("acc"), "+", var("item")]}}}
    assert ev(no_initial) == "a+b+c"
    assert ev({"$reduce": {"array": [], "initial": 7, "expr": 1}}) == 7
    assert "empty" in err({"$reduce": {"array": [], "expr": 1}}).reason
    assert err({"$reduce": {"array": [1], "expr": 1, "as": "a", "accumulator": "a"}}).path == "$.$reduce"
    assert err({"$reduce": {"array": [1, 2], "initial": 0, "expr": {"$x": 1}}}).path == "$.$reduce.expr.$x"
    assert ev({"$reduce": {"array": [1], "initial": 0, "expr": var("missing")}}) is None


# ---------------------------------------------------------------- $get / $has


def test_get() -> None:
    assert ev({"$get": [var("user"), "address.city"]}, CTX) == "Oslo"
    assert ev({"$get": [var("items"), "1.name"]}, CTX) == "y"
    assert ev({"$get": [[10, 20], 1]}) == 20
    assert ev({"$get": [{"a": {"b": 1}}, "a.b"]}) == 1
    assert ev({"$get": [var("user"), "nope", "dflt"]}, CTX) == "dflt"
    assert ev({"$get": [var("user"), "name", {"$nope": 1}]}, CTX) == "Ann"  # default is lazy
    assert ev({"$get": [var("user"), "__class__"]}, CTX) is None
    assert ev({"$get": [var("s"), "length"]}, CTX) is None
    assert ev({"$get": [var("user"), "nil", 0]}, {"user": {"nil": None}}) is None  # null is not undefined
    assert ev({"$get": [var("user"), var("key")]}, {**CTX, "key": "name"}) == "Ann"
    assert err({"$get": [{}, None]}).path == "$.$get[1]"
    assert err({"$get": [{}]}).path == "$.$get"


def test_has() -> None:
    assert ev({"$has": [var("user"), "name"]}, CTX) is True
    assert ev({"$has": [{"a": None}, "a"]}) is True
    assert ev({"$has": [var("user"), "constructor"]}, CTX) is False
    assert ev({"$has": [[1, 2], 1]}) is True
    assert ev({"$has": [[1, 2], "1"]}) is True
    assert ev({"$has": [[1, 2], 2]}) is False
    assert ev({"$has": [[1, 2], -1]}) is False
    assert ev({"$has": [[1, 2], "01"]}) is False
    assert ev({"$has": [[1, 2], "length"]}) is False
    assert ev({"$has": ["abc", "length"]}) is False
    assert ev({"$has": [None, "x"]}) is False
    assert ev({"$has": [{"0": 1}, 0]}) is True
    assert err({"$has": [{}, None]}).path == "$.$has[1]"
    assert err({"$has": [{}, True]}).path == "$.$has[1]"


# ---------------------------------------------------------------- errors and paths


def test_error_class_and_paths() -> None:
    e = err({"items": [1, 2, {"$var": 5}]})
    assert isinstance(e, ValueError)
    assert e.code == "JSONLEX_ERROR"
    assert e.path == "$.items[2].$var"
    assert str(e) == f"{e.reason} (at $.items[2].$var)"


def test_unknown_and_misplaced_operators() -> None:
    e = err({"$foo": 1})
    assert (e.reason, e.path) == ("unknown operator $foo", "$.$foo")
    assert err({"a": [{"$bar": [1]}]}).path == "$.a[0].$bar"
    e = err({"x": {"$var": "a", "other": 1}})
    assert (e.reason, e.path) == ("operator object must have exactly one key", "$.x")
    e = err({"a": 1, "$var": "x"})
    assert e.path == "$.$var" and "misplaced" in e.reason
    e = err({"a": 1, "$zzz": "x"})
    assert (e.reason, e.path) == ("unknown operator $zzz", "$.$zzz")
    assert err({"$": 1}).reason == "unknown operator $"
    assert err({"$not": {"$nope": 1}}).path == "$.$not.$nope"


def test_odd_keys_in_paths() -> None:
    assert err({"with.dot": {"$x": 1}}).path == '$["with.dot"].$x'
    assert err({"ünï": {"$x": 1}}).path == '$["ünï"].$x'
    assert err({"_ok1": {"$x": 1}}).path == "$._ok1.$x"


def test_bad_context_and_limits_arguments() -> None:
    with pytest.raises(JSONLexError, match="context"):
        evaluate({"__jsonlex": True, "expr": 1}, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(JSONLexError, match="limits"):
        evaluate({"__jsonlex": True, "expr": 1}, limits="big")  # type: ignore[arg-type]


class _Hostile:
    def __str__(self) -> str:
        raise RuntimeError("boom")


def test_unexpected_exceptions_are_wrapped() -> None:
    e = err({"$concat": [var("h")]}, {"h": _Hostile()})
    assert e.path == "$.$concat"
    assert "internal error" in e.reason and "boom" in e.reason
    assert isinstance(e.__cause__, RuntimeError)


# ---------------------------------------------------------------- limits


def _deep(levels: int, make: Any) -> Any:
    node: Any = True
    for _ in range(levels):
        node = make(node)
    return node


@pytest.mark.parametrize("make", [lambda n: {"$not": n}, lambda n: [n], lambda n: {"k": n}])
def test_deep_nesting_hits_depth_limit_not_recursion(make: Any) -> None:
    deep = _deep(10_000, make)
    e = err(deep)
    assert "max_depth" in e.reason
    with pytest.raises(JSONLexError, match="max_depth"):
        compile({"k": deep})


def test_depth_limit_is_exact() -> None:
    limits = JSONLexLimits(max_depth=3)
    assert ev(_deep(3, lambda n: {"$not": n}), limits=limits) is False
    assert "max_depth" in err(_deep(4, lambda n: {"$not": n}), limits=limits).reason


def test_python_recursion_limit_is_wrapped() -> None:
    e = err(_deep(10_000, lambda n: [n]), limits=JSONLexLimits(max_depth=1_000_000))
    assert "recursion" in e.reason


def test_deep_context_list_in_concat() -> None:
    deep = _deep(10_000, lambda n: [n])
    assert "max_depth" in err({"$concat": [var("d")]}, {"d": deep}).reason


def test_huge_map_hits_node_limit() -> None:
    expr = {"$map": {"array": var("items"), "expr": var("item")}}
    e = err(expr, {"items": list(range(100_000))})
    assert "max_nodes" in e.reason and e.path == "$.$map.expr"
    assert ev(expr, {"items": list(range(1000))}) == list(range(1000))


def test_huge_map_output_hits_output_limit() -> None:
    expr = {"$map": {"array": var("items"), "expr": "abcdefghij"}}
    limits = JSONLexLimits(max_nodes=10**6, max_output=100_000)
    assert "max_output" in err(expr, {"items": list(range(20_000))}, limits=limits).reason


def test_huge_concat_hits_output_limit() -> None:
    s = "x" * 600_000
    assert ev({"$concat": [var("s")]}, {"s": s}) == s
    assert "max_output" in err({"$concat": [var("s"), var("s")]}, {"s": s}).reason
    doubling = {"$reduce": {"array": list(range(64)), "initial": "ab", "expr": {"$concat": [var("acc"), var("acc")]}}}
    assert "max_output" in err(doubling).reason
    nesting = {"$reduce": {"array": list(range(64)), "initial": [1], "expr": [var("acc"), var("acc")]}}
    assert "max_output" in err(nesting).reason


def test_limits_dataclass() -> None:
    limits = JSONLexLimits()
    assert (limits.max_depth, limits.max_nodes, limits.max_output) == (64, 10_000, 1_000_000)
    with pytest.raises(FrozenInstanceError):
        limits.max_depth = 3  # type: ignore[misc]
    bads: tuple[Any, ...] = (0, -1, True, 1.5)
    for bad in bads:
        with pytest.raises(ValueError, match="positive"):
            JSONLexLimits(max_nodes=bad)
    assert "max_nodes" in err(list(range(10)), limits=JSONLexLimits(max_nodes=5)).reason


# ---------------------------------------------------------------- misc API


def test_operators_and_undefined() -> None:
    assert frozenset({
        "$var", "$eq", "$ne", "$gt", "$lt", "$gte", "$lte", "$and", "$or", "$not", "$if", "$concat",
        "$substring", "$length", "$map", "$filter", "$reduce", "$get", "$has",
    }) == OPERATORS  # fmt: skip
    assert repr(UNDEFINED) == "UNDEFINED"
    assert not UNDEFINED
    assert copy.copy(UNDEFINED) is UNDEFINED and copy.deepcopy(UNDEFINED) is UNDEFINED
    assert ev(var("missing")) is None


# ---------------------------------------------------------------- property tests

PROP_CTX = {"a": 1, "b": "two", "n": None, "f": 1.5, "items": [1, 2, 3], "obj": {"x": [1, {"y": "z"}]}, "t": True}
PATHS = ["a", "b", "n", "f", "items", "items.0", "items.9", "obj", "obj.x.1.y", "missing", "item", "acc", "t", "s"]
LIST_OPS = sorted(op for op in OPERATORS if op not in {"$var", "$not", "$length", "$map", "$filter", "$reduce"})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)  # fmt: skip
leaves = st.one_of(scalars, st.builds(var, st.sampled_from(PATHS)))


def _loop(op: str, array: Any, body: Any, extra: dict[str, Any]) -> dict[str, Any]:
    return {op: {"array": array, ("condition" if op == "$filter" else "expr"): body, **extra}}


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    args = st.lists(children, max_size=4)
    return st.one_of(
        args,
        st.dictionaries(st.text(alphabet="abxy_", min_size=1, max_size=3), children, max_size=3),
        st.builds(lambda op, a: {op: a}, st.sampled_from(LIST_OPS), args),
        st.builds(lambda op, a: {op: a}, st.sampled_from(["$not", "$length"]), children),
        st.builds(_loop, st.sampled_from(["$map", "$filter", "$reduce"]), children, children,
                  st.sampled_from([{}, {"as": "s"}, {"initial": 0}, {"accumulator": "s"}])),
        st.builds(lambda k, v: {k: v}, st.sampled_from(["$bogus", "$var", "$"]), children),
    )  # fmt: skip


expressions = st.recursive(leaves, _extend, max_leaves=20)


def _contains_undefined(v: Any) -> bool:
    if v is UNDEFINED:
        return True
    if isinstance(v, list):
        return any(_contains_undefined(x) for x in v)
    if isinstance(v, dict):
        return any(_contains_undefined(x) for x in v.values())
    return False


def _measure(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    if isinstance(v, list):
        return len(v) + sum(_measure(x) for x in v)
    if isinstance(v, dict):
        return len(v) + sum(len(k) + _measure(x) for k, x in v.items())
    return 0


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_property_value_or_jsonlex_error(expr: Any) -> None:
    try:
        result = ev(expr, PROP_CTX)
    except JSONLexError as e:
        assert e.path.startswith("$")
        return
    assert not _contains_undefined(result)
    json.dumps(result)  # plain JSON values (NaN/Infinity allowed by Python's encoder)


@settings(max_examples=300, deadline=None)
@given(expressions, st.integers(1, 300))
def test_property_output_limit_holds(expr: Any, max_output: int) -> None:
    limits = JSONLexLimits(max_output=max_output, max_nodes=500, max_depth=12)
    try:
        result = ev(expr, PROP_CTX, limits=limits)
    except JSONLexError:
        return
    assert _measure(result) <= max_output


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_property_compile_then_evaluate(expr: Any) -> None:
    try:
        compiled = compile(expr)
    except JSONLexError:
        return
    try:
        evaluate(compiled, PROP_CTX)
    except JSONLexError as e:
        # compile checked the forms; what is left are runtime type errors
        assert "unknown operator" not in e.reason and "exactly one key" not in e.reason


def _js_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return type(v).__name__


@settings(max_examples=300, deadline=None)
@given(scalars, scalars)
def test_property_equality_matches_reference(a: Any, b: Any) -> None:
    expected = _js_type(a) == _js_type(b) and a == b
    if _js_type(a) == "number" and _js_type(b) == "number":
        expected = float(a) == float(b)
    assert ev({"$eq": [var("a"), var("b")]}, {"a": a, "b": b}) is expected
    assert ev({"$ne": [var("a"), var("b")]}, {"a": a, "b": b}) is (not expected)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(-1000, 1000), st.floats()), st.one_of(st.integers(-1000, 1000), st.floats()))
def test_property_numeric_comparison_matches_python(a: float, b: float) -> None:
    got = [ev({op: [a, b]}) for op in ("$gt", "$lt", "$gte", "$lte")]
    assert got == [a > b, a < b, a >= b, a <= b]
    if math.isnan(a) or math.isnan(b):
        assert got == [False] * 4
