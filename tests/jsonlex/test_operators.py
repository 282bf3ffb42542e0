"""One declaration per operator: ``compile`` and ``evaluate`` read the same table."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from exprsn_ipc.errors import JSONLexError
from exprsn_ipc.jsonlex import OPERATORS, compile, evaluate
from exprsn_ipc.jsonlex.machine import OneExpression
from exprsn_ipc.jsonlex.operators import REGISTRY, operator

NAMES = sorted(REGISTRY)


def test_the_public_operator_names_are_the_declared_ones() -> None:
    assert frozenset(REGISTRY) == OPERATORS
    assert len(NAMES) == 19


@pytest.mark.parametrize("name", NAMES)
def test_each_operator_compiles_and_evaluates_its_example(name: str) -> None:
    operand, context, result = REGISTRY[name].example
    expression = {name: operand}
    compiled = compile(expression)
    assert compiled["expr"] == expression
    assert evaluate(compiled, context) == result
    # Nested inside another expression too: validation walks into it as evaluation does.
    assert evaluate(compile({"wrapped": [expression]}), context) == {"wrapped": [result]}


@pytest.mark.parametrize("name", [n for n in NAMES if not isinstance(REGISTRY[n].shape, OneExpression)])
def test_compile_and_evaluate_refuse_a_malformed_operand_alike(name: str) -> None:
    expression: dict[str, Any] = {name: 42}
    with pytest.raises(JSONLexError) as compiled:
        compile(expression)
    with pytest.raises(JSONLexError) as evaluated:
        evaluate({"__jsonlex": True, "expr": expression})
    assert compiled.value.reason == evaluated.value.reason
    assert compiled.value.path == evaluated.value.path == f"$.{name}"


def test_declaring_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        operator("$eq", REGISTRY["$eq"].shape, example=(None, {}, None))(REGISTRY["$eq"].run)


def test_an_unknown_operator_is_refused_by_both() -> None:
    with pytest.raises(JSONLexError, match=r"unknown operator \$upper"):
        compile({"$upper": "x"})
    with pytest.raises(JSONLexError, match=r"unknown operator \$upper"):
        evaluate({"__jsonlex": True, "expr": {"$upper": "x"}})


ADD_AN_OPERATOR = textwrap.dedent(
    """
    from exprsn_ipc.jsonlex import compile, evaluate
    from exprsn_ipc.jsonlex.machine import Arguments
    from exprsn_ipc.jsonlex.operators import operator

    # The recipe in docs/architecture.md: one declaration ...
    @operator("$upper", Arguments(1, 1), example=([{"$var": "name"}], {"name": "ada"}, "ADA"))
    def _upper(run, args, ctx, depth):
        return run.to_string(run.ev(args[0], ctx, depth, 0)).upper()

    # ... and both compile and evaluate know it.
    expression = compile({"$upper": [{"$var": "name"}]})
    print(evaluate(expression, {"name": "ada"}))
    try:
        compile({"$upper": []})
    except Exception as exc:
        print(type(exc).__name__, exc)
    """
)


def test_one_declaration_adds_an_operator_everywhere() -> None:
    """Run in a fresh interpreter so the extra operator never leaks into other tests."""
    done = subprocess.run(
        [sys.executable, "-c", ADD_AN_OPERATOR], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ADA"
    assert lines[1] == "JSONLexError $upper expects a list of 1 expressions (at $.$upper)"
