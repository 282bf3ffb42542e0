"""Engine.IO / Socket.IO text packets: ours must read and write what python-socketio does."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import socketio.packet as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from exprsn_ipc.errors import EnvelopeError, PacketError
from exprsn_ipc.sio import packets as sp

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("type_", "namespace", "data", "id_"),
    [
        (sp.EVENT, "/ipc/exprsn-timeline", ["ipc:publish", '{"event":"x"}'], 7),
        (sp.EVENT, "/", ["hello", {"a": [1, 2]}, None], None),
        (sp.ACK, "/ipc/timeline", [{"success": True, "receivers": 2}], 123456),
        (sp.ACK, "/ipc/timeline", [], 3),
        (sp.CONNECT, "/ipc/exprsn-auth", {"token": "t", "protocol": "exprsn-ipc/1"}, None),
        (sp.CONNECT_ERROR, "/ipc/x", {"message": "UNAUTHORIZED: no token", "data": {"error": "UNAUTHORIZED"}}, None),
        (sp.DISCONNECT, "/ipc/exprsn-timeline", None, None),
    ],
)
def test_packets_match_python_socketio_both_ways(type_: int, namespace: str, data: Any, id_: int | None) -> None:
    ours = sp.encode(type_, namespace, data, id_)
    theirs = reference.Packet(type_, data=data, namespace=namespace, id=id_).encode()
    assert ours == "4" + theirs
    # Each side reads the other's text back to the same packet.
    parsed = sp.decode("4" + theirs)
    assert (parsed.type, parsed.namespace, parsed.data, parsed.id) == (type_, namespace, data, id_)
    back = reference.Packet(encoded_packet=ours[1:])
    assert (back.packet_type, back.namespace or "/", back.data, back.id) == (type_, namespace, data, id_)


def test_a_namespace_without_a_trailing_comma_is_read() -> None:
    packet = sp.decode("41/ipc/exprsn-timeline")
    assert (packet.type, packet.namespace, packet.data) == (sp.DISCONNECT, "/ipc/exprsn-timeline", None)


def test_encode_event_asks_for_an_ack_only_with_an_id() -> None:
    assert sp.encode_event("/ipc/a", "ipc:send", ("raw",)) == '42/ipc/a,["ipc:send","raw"]'
    assert sp.encode_event("/ipc/a", "ipc:publish", ("raw",), 9) == '42/ipc/a,9["ipc:publish","raw"]'


def test_open_packet_is_the_engine_io_handshake() -> None:
    text = sp.open_packet("abc", ping_interval=25, ping_timeout=20, max_payload=1000)
    assert text[0] == sp.EIO_OPEN
    assert orjson.loads(text[1:]) == {
        "sid": "abc",
        "upgrades": [],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 1000,
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a Socket.IO packet"),
        ("2", "not a Socket.IO packet"),
        ("4", "not a Socket.IO packet"),
        ("4x", "not a Socket.IO packet"),
        ('451-/ipc/a,["e",{"_placeholder":true,"num":0}]', "binary"),
        ("47/ipc/a,[]", "unknown Socket.IO packet type 7"),
        ("42/ipc/a,{not json", "malformed JSON"),
        ('42/ipc/a,{"event":"x"}', "needs a JSON array"),
        ("42/ipc/a,[]", "needs a name"),
        ("42/ipc/a,[1,2]", "needs a name"),
        ('43/ipc/a,1"x"', "needs a JSON array"),
        ('42/ipc/a,1234567890123456["e"]', "too long"),
    ],
)
def test_malformed_packets_are_refused_with_a_specific_error(text: str, reason: str) -> None:
    with pytest.raises(sp.PacketError, match=reason) as caught:
        sp.decode(text)
    assert isinstance(caught.value, EnvelopeError)
    assert caught.value.code == "INVALID_MESSAGE"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60) | st.builds(lambda tail: "4" + tail, st.text(max_size=60)))
def test_decode_raises_only_packet_errors_on_arbitrary_text(text: str) -> None:
    """Issue 16: no input makes the lane's parser raise anything but a PacketError."""
    try:
        packet = sp.decode(text)
    except PacketError:
        return
    assert packet.type in {sp.CONNECT, sp.DISCONNECT, sp.EVENT, sp.ACK, sp.CONNECT_ERROR}
    assert packet.id is None or packet.id >= 0
