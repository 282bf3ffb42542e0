"""The bridge transport over HTTPS: a Bridge served with certificates from our own
generator, workers verifying it against our root CA (wss, on the lane and off it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.bridge.lane import LaneLink
from exprsn_ipc.bridge.sio_server import SioLink
from exprsn_ipc.certs.authority import cert_paths, generate_certificates
from exprsn_ipc.errors import TransportError
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport

from ..servers import serve

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two certificate directories with a root CA each: the Bridge's, and a stranger's."""
    ours = tmp_path_factory.mktemp("bridge-pki") / "certs"
    generate_certificates(ours, only=["exprsn-bridge"], key_size=2048)
    stranger = tmp_path_factory.mktemp("other-pki") / "certs"
    generate_certificates(stranger, only=[], key_size=2048)
    return ours, stranger


@pytest.mark.parametrize("lane", [True, False])
async def test_workers_talk_through_an_https_bridge(pkis: tuple[Path, Path], lane: bool) -> None:
    certs_dir, _ = pkis
    settings = make_test_settings(ipc_transport="bridge", ipc_rate_max=100_000, certs_dir=certs_dir)
    app = create_app(settings, backend=MemoryBackend())
    cert, key = cert_paths(certs_dir, "exprsn-bridge")
    async with serve(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        assert url.startswith("https://")
        url = url.replace("127.0.0.1", "localhost")  # the name the certificate is for
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def worker(name: str) -> IPCWorker:
            return IPCWorker(name, settings=settings, transport=BridgeTransport(settings, url=url, lane=lane))

        receiver = worker("exprsn-auth")
        receiver.on("user:validate", lambda data, meta: inbox.put_nowait(data))
        sender = worker("exprsn-timeline")
        async with receiver, sender:
            result = await sender.emit("user:validate", {"n": 1}, target="exprsn-auth")
            assert result.receivers == 1
            assert await asyncio.wait_for(inbox.get(), WAIT) == {"n": 1}
            links = {type(conn.link) for conn in app.bridge.connections.values()}
            assert links == ({LaneLink} if lane else {SioLink})


async def test_a_bridge_certificate_from_another_ca_is_refused(pkis: tuple[Path, Path]) -> None:
    certs_dir, stranger = pkis
    settings = make_test_settings(ipc_transport="bridge", certs_dir=certs_dir)
    app = create_app(settings, backend=MemoryBackend())
    cert, key = cert_paths(certs_dir, "exprsn-bridge")
    async with serve(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        url = url.replace("127.0.0.1", "localhost")
        transport = BridgeTransport(settings, url=url, ca_file=stranger / "ca-cert.pem", connect_timeout=WAIT)
        worker = IPCWorker("exprsn-timeline", settings=settings, transport=transport)
        with pytest.raises(TransportError, match="certificate verify failed"):
            await worker.start()
    assert not app.bridge.connections
