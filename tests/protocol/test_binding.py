"""The envelope binding compares data as JSON values, and our JWT codec agrees with PyJWT.

DESIGN fix 3 binds an envelope to its token: the data it carries must be the data
the token was signed over. In JSON (and in the original's JavaScript) ``true`` is
not ``1``; Python's ``==`` says it is, which let ``{"admin": 1}`` travel under a
token signed over ``{"admin": true}``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exprsn_ipc import BrokerTokenManager, Envelope
from exprsn_ipc.errors import TokenBindingError, TokenError
from exprsn_ipc.protocol.jsonvalues import json_equal
from exprsn_ipc.testing import make_test_settings

KEY = "k" * 64


@pytest.fixture(scope="module")
def manager() -> BrokerTokenManager:
    return BrokerTokenManager(service_name="exprsn-timeline", settings=make_test_settings(ipc_broker_key=KEY))


def carried(manager: BrokerTokenManager, signed: Any, data: Any) -> Envelope:
    """An envelope whose token was signed over ``signed`` but which carries ``data``, as read off the wire."""
    envelope = manager.sign_envelope("user:updated", signed, target="broadcast")
    return Envelope.decode(dataclasses.replace(envelope, data=data).encode())


# --------------------------------------------------------------------------- #
# Confusable pairs, through the real verification path
# --------------------------------------------------------------------------- #

REJECTED = [
    ({"admin": True}, {"admin": 1}),
    ({"admin": False}, {"admin": 0}),
    ({"admin": 1}, {"admin": True}),
    ({"admin": 0}, {"admin": False}),
    ({"flags": [True, False]}, {"flags": [1, 0]}),
    ({"outer": {"inner": [{"on": True}]}}, {"outer": {"inner": [{"on": 1}]}}),
    ({"n": None}, {"n": 0}),
    ({"n": None}, {"n": False}),
    ({"n": None}, {"n": ""}),
    ({"s": ""}, {"s": False}),
    ({"list": []}, {"list": {}}),
    ({"n": "1"}, {"n": 1}),
    ({"n": 1}, {"n": 2}),
    ([True], [1]),
    ({"a": 1}, {"a": 1, "b": 2}),
]

ACCEPTED = [
    ({"n": 1}, {"n": 1.0}),  # JSON numbers: 1 and 1.0 are the same number
    ({"a": 1, "b": [True, None, "x"]}, {"b": [True, None, "x"], "a": 1}),  # key order is not part of a value
    ({"admin": True}, {"admin": True}),
    ({"deep": [[[[{"x": False}]]]]}, {"deep": [[[[{"x": False}]]]]}),
]


def test_admin_one_is_not_admin_true(manager: BrokerTokenManager) -> None:
    """The reported case: a token over {"admin": true} must not vouch for {"admin": 1}."""
    with pytest.raises(TokenBindingError, match="data does not match"):
        manager.verify_envelope(carried(manager, {"admin": True}, {"admin": 1}))


@pytest.mark.parametrize(("signed", "data"), REJECTED, ids=[f"{s}-vs-{d}" for s, d in REJECTED])
def test_confusable_data_is_rejected(manager: BrokerTokenManager, signed: Any, data: Any) -> None:
    with pytest.raises(TokenBindingError):
        manager.verify_envelope(carried(manager, signed, data))


@pytest.mark.parametrize(("signed", "data"), ACCEPTED, ids=[f"{s}-vs-{d}" for s, d in ACCEPTED])
def test_equal_json_values_are_accepted(manager: BrokerTokenManager, signed: Any, data: Any) -> None:
    assert manager.verify_envelope(carried(manager, signed, data))["source"] == "exprsn-timeline"


def test_deep_nesting_is_compared_without_exhausting_the_stack() -> None:
    def nest(leaf: Any, depth: int) -> list[Any]:
        value: list[Any] = [leaf]
        for _ in range(depth):
            value = [value]
        return value

    # Deeper than orjson serialises (254) and than Python's recursive == goes (1000).
    assert json_equal(nest(True, 3000), nest(True, 3000))
    assert not json_equal(nest(True, 3000), nest(1, 3000))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_json_equal_is_equality_of_the_json_texts(a: Any, b: Any) -> None:
    """Two values are equal exactly when their canonical JSON texts are (numbers as numbers)."""

    def canonical(value: Any) -> Any:
        # Tag each scalar with its JSON type so Python's True == 1 cannot blur them.
        if isinstance(value, bool):
            return ("bool", value)
        if isinstance(value, int | float):
            return ("number", float(value)) if float(value) == value else ("number", value)
        if isinstance(value, list):
            return ("array", tuple(canonical(v) for v in value))
        if isinstance(value, dict):
            return ("object", frozenset((k, canonical(v)) for k, v in value.items()))
        return (type(value).__name__, value)

    assert json_equal(a, b) == (canonical(a) == canonical(b))
    assert json_equal(a, a)


# --------------------------------------------------------------------------- #
# Our codec and PyJWT accept and reject the same tokens
# --------------------------------------------------------------------------- #


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def broker_rules(claims: dict[str, Any]) -> bool:
    """What a broker token needs beyond a valid HS256 JWT (the original's checks)."""
    exp_ok = "exp" in claims or claims.get("stateful") is True
    return claims.get("type") == "broker" and isinstance(claims.get("id"), str) and exp_ok


def pyjwt_accepts(token: str) -> dict[str, Any] | None:
    try:
        decoded = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_iat": False, "verify_nbf": False})
    except jwt.PyJWTError:
        return None
    return decoded if isinstance(decoded, dict) else None


def ours_accepts(manager: BrokerTokenManager, token: str) -> dict[str, Any] | None:
    try:
        return manager.verify_token(token)
    except TokenError:
        return None


now = int(time.time())
claims_strategy = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(min_size=1, max_size=8) | st.integers(0, 10),
        "type": st.sampled_from(["broker", "session", ""]),
        "exp": st.sampled_from([now + 3600, now - 3600, float(now + 3600)]),
        "stateful": st.booleans(),
        "source": st.text(max_size=10),
        "data": json_values,
    },
)
mutations = st.sampled_from(
    ["none", "other-key", "flip-signature", "swap-payload", "alg-none", "hs512", "header-order", "drop-segment"]
)


def mutate(token: str, how: str, claims: dict[str, Any]) -> str:
    header, payload, signature = token.split(".")
    body = json.dumps(claims).encode()
    if how == "other-key":
        return jwt.encode(claims, "x" * 64, algorithm="HS256")
    if how == "flip-signature":
        return f"{header}.{payload}.{signature[:-2]}{'AA' if not signature.endswith('AA') else 'BB'}"
    if how == "swap-payload":
        return f"{header}.{_b64(json.dumps({**claims, 'source': 'forged'}).encode())}.{signature}"
    if how == "alg-none":
        return _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(body) + "."
    if how == "hs512":
        return jwt.encode(claims, KEY, algorithm="HS512")
    if how == "header-order":
        return jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "JWT", "kid": "k1"})
    if how == "drop-segment":
        return f"{header}.{payload}"
    return token


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claims_strategy, mutations)
def test_our_codec_and_pyjwt_agree(manager: BrokerTokenManager, claims: dict[str, Any], how: str) -> None:
    token = mutate(jwt.encode(claims, KEY, algorithm="HS256"), how, claims)
    theirs = pyjwt_accepts(token)
    expected = theirs is not None and broker_rules(theirs)
    ours = ours_accepts(manager, token)
    assert (ours is not None) == expected, (how, claims, token)
    if ours is not None:
        assert ours == theirs
