from __future__ import annotations

import json

import pytest

from exprsn_ipc import MISSING, Envelope, EnvelopeError, PayloadTooLargeError
from exprsn_ipc.protocol.envelope import validate_event_name, validate_service_name


def make(**kw: object) -> Envelope:
    values: dict[str, object] = {
        "event": "post:created",
        "source": "exprsn-timeline",
        "target": "broadcast",
        "data": {"id": 1},
        "token": "t",
        "timestamp": 1700000000000,
    }
    values.update(kw)
    return Envelope(**values)  # type: ignore[arg-type]


def test_key_order_matches_the_original() -> None:
    raw = make().encode()
    assert list(json.loads(raw)) == [
        "event",
        "data",
        "source",
        "target",
        "operation",
        "token",
        "requireAck",
        "timestamp",
        "metadata",
    ]
    assert raw.startswith(b'{"event":"post:created","data":{"id":1},"source"')
    assert b" " not in raw  # JSON.stringify writes no spaces


def test_data_key_is_left_out_when_missing() -> None:
    raw = make(data=MISSING).encode()
    assert "data" not in json.loads(raw)
    assert Envelope.decode(raw).data is MISSING
    assert Envelope.decode(raw).payload is None


def test_round_trip_and_unicode() -> None:
    env = make(data={"text": "héllo ✓ \u2028", "n": [1, 2.5, None, True]}, metadata={"k": "v"}, require_ack=True)
    assert Envelope.decode(env.encode()) == env


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"nope",
        b"[]",
        b"1",
        b'{"source":"a","target":"b"}',
        b'{"event":1,"source":"a","target":"b"}',
        b'{"event":"a:b","source":"","target":"b"}',
        b'{"event":"a:b","source":"a","target":5}',
        b'{"event":"a:b","source":"a","target":"b","requireAck":"yes"}',
        b'{"event":"a:b","source":"a","target":"b","metadata":[1]}',
        b'{"event":"a:b","source":"a","target":"b","timestamp":"now"}',
        b'{"event":"a:b","source":"a","target":"b","token":7}',
        b'{"event":"connect","source":"a","target":"b"}',
    ],
)
def test_malformed_envelopes_are_rejected(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.decode(raw)


def test_size_limit() -> None:
    raw = make(data="x" * 2000).encode()
    with pytest.raises(PayloadTooLargeError) as info:
        Envelope.decode(raw, max_bytes=1000)
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert Envelope.decode(raw, max_bytes=len(raw)).data == "x" * 2000


@pytest.mark.parametrize(
    "name", ["post:created", "content:moderate:batch", "test:ping", "user:validate", "data:request", "ack"]
)
def test_original_event_names_are_valid(name: str) -> None:
    assert validate_event_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "connect",
        "disconnect",
        "connect_error",
        "disconnecting",
        "newListener",
        "removeListener",
        "",
        "has space",
        "a" * 300,
        5,
        None,
    ],
)
def test_reserved_and_bad_event_names(name: object) -> None:
    with pytest.raises(EnvelopeError):
        validate_event_name(name)


@pytest.mark.parametrize(
    "name", ["ready", "error", "sent", "received", "handler-error", "subscribed", "unsubscribed", "disconnected"]
)
def test_local_events_cannot_be_sent(name: str) -> None:
    with pytest.raises(EnvelopeError, match="local"):
        validate_event_name(name)
    assert validate_event_name(name, allow_local=True) == name


def test_service_names() -> None:
    assert validate_service_name("exprsn-herald-worker") == "exprsn-herald-worker"
    assert validate_service_name("broadcast", allow_broadcast=True) == "broadcast"
    for bad in ("Exprsn", "a b", "", "-x", "ipc:x", "broadcast!"):
        with pytest.raises(EnvelopeError):
            validate_service_name(bad)


def test_unserialisable_payload() -> None:
    with pytest.raises(EnvelopeError, match="JSON"):
        make(data={"x": object()}).encode()
