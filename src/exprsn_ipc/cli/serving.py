"""Long-running CLI jobs: the Bridge server and the event tail."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import socketio

from exprsn_ipc.cli._common import explain_refusal, explain_unreachable
from exprsn_ipc.errors import TransportError
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.web.tls import ensure_dev_certificates

log = logging.getLogger("exprsn_ipc.cli")


async def run_bridge(settings: Settings) -> None:
    """Serve the Bridge until SIGINT/SIGTERM: HTTPS on BRIDGE_PORT when certificates exist."""
    from exprsn_ipc.bridge import create_app
    from exprsn_ipc.web.https import HTTPSServerManager

    ensure_dev_certificates(settings)
    app = create_app(settings)
    manager = HTTPSServerManager(
        "exprsn-bridge",
        settings.bridge_port,
        http_port=settings.bridge_http_port,
        enable_http=settings.bridge_http_port is not None,
        redirect_http=True,
        settings=settings,
        host=settings.bridge_host,
    )
    await manager.serve_forever(app)


async def tail_events(
    settings: Settings,
    service: str,
    url: str,
    verify: ssl.SSLContext | bool,
    show: Callable[[str, Any, Any], None],
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Print every event reaching ``service`` through the Bridge until cancelled."""
    tokens = BrokerTokenManager(service_name=service, settings=settings)
    session = None
    if isinstance(verify, ssl.SSLContext):
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify))
    client = socketio.AsyncClient(
        ssl_verify=verify is not False, http_session=session, logger=False, handle_sigint=False
    )
    namespace = f"/ipc/{service}"

    @client.on("*", namespace=namespace)
    async def on_any(event: str, data: Any = None, meta: Any = None) -> None:
        show(event, data, meta)

    refusals: list[str] = []

    @client.on("connect_error", namespace=namespace)
    async def on_refused(data: Any = None) -> None:
        # The Bridge says why it refused, e.g. "UNAUTHORIZED: invalid broker token: ...".
        refusals.append(str(data.get("message") if isinstance(data, dict) else data))

    try:
        try:
            await client.connect(
                url,
                namespaces=[namespace],
                auth=lambda: {"token": tokens.generate_token(operation="connect")},
                transports=["websocket"],
                wait_timeout=10,
            )
        except socketio.exceptions.ConnectionError as exc:
            if refusals:
                refused = f"{url}{namespace} refused the connection: {refusals[-1]}"
                raise TransportError(explain_refusal(refused)) from exc
            raise TransportError(explain_unreachable(exc, url, settings)) from exc
        ready()
        await asyncio.Event().wait()
    finally:
        await client.disconnect()
        if session is not None:
            await session.close()
