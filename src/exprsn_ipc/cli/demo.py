"""``exprsn-ipc demo``: the Bridge and five example services talking over HTTPS.

Everything runs in this one process and event loop: the Bridge (embedded bus,
or Redis when ``REDIS_URL`` is set) and exprsn-auth, -moderator, -herald,
-timeline and -spark from the repository's ``services/`` folder, each with its
own :class:`~exprsn_ipc.web.HTTPSServerManager` and its own
:class:`~exprsn_ipc.IPCWorker` connected to the Bridge over HTTPS with the
bridge transport, exactly as separate processes would be
(:mod:`exprsn_ipc.cli.demo_stack` starts and stops them).

The demo keeps its certificates, SQLite files and broker key in a private
folder (``./.exprsn-demo`` by default) and forces development settings for
itself; it never reads or writes ``.env``. This module runs a scripted user
journey against the stack and prints every hop the Bridge routes, fed by the
Bridge's route listener (the same hook as the dashboard's live feed). See
``docs/demo.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from exprsn_ipc.cli._common import configure_logging, console
from exprsn_ipc.cli.demo_stack import DEFAULT_DIR, STEP_TIMEOUT_S, DemoError, DemoStack, Hop, HopRecorder, demo_settings
from exprsn_ipc.errors import IPCError
from exprsn_ipc.protocol.constants import BRIDGE_SERVICE
from exprsn_ipc.protocol.events import BusEvent

if TYPE_CHECKING:  # the heavy parts are imported when the demo runs, not with every CLI command
    import httpx

# The stack's names (from .demo_stack) stay importable from here, where tests and users import them.
__all__ = ["DemoError", "DemoStack", "Hop", "HopRecorder", "StepResult", "demo", "demo_settings", "run_journey"]

READY_LINE = "Everything is running (Ctrl-C to stop)"


# --------------------------------------------------------------------------- #
# The journey
# --------------------------------------------------------------------------- #


@dataclass
class StepResult:
    number: int
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        return f"{mark} {self.number}. {self.name}" + (f" — {self.detail}" if self.detail else "")


@dataclass
class _User:
    name: str
    email: str
    password: str
    user_id: str = ""
    session_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"x-user-id": self.user_id, "x-session-id": self.session_id}


def _json(response: httpx.Response, expected: int) -> dict[str, Any]:
    if response.status_code != expected:
        request = response.request
        raise AssertionError(f"{request.method} {request.url.path} → {response.status_code}: {response.text[:200]}")
    body = response.json()
    if not isinstance(body, dict):
        raise AssertionError(f"{response.request.url.path} did not answer a JSON object")
    return body


def _has(**fields: Any) -> Callable[[Any], bool]:
    """A hop-data predicate: ``data[key] == value`` for every given field."""
    return lambda data: isinstance(data, dict) and all(data.get(k) == v for k, v in fields.items())


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Poll ``check`` (state behind an HTTP API has no event to await) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


class _SparkClient:
    """A user's Socket.IO connection to exprsn-spark (``auth={"userId", "sessionId"}``)."""

    def __init__(self, url: str, verify: ssl.SSLContext, user: _User) -> None:
        import aiohttp
        import socketio

        self.url = url
        self.user = user
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify))
        self.sio = socketio.AsyncClient(
            reconnection=False, http_session=self.session, logger=False, handle_sigint=False
        )
        self.events: dict[str, asyncio.Queue[Any]] = {
            "message:new": asyncio.Queue(),
            "message:delivered": asyncio.Queue(),
        }
        for name, queue in self.events.items():
            self.sio.on(name, queue.put_nowait)

    async def connect(self, timeout: float) -> None:
        auth = {"userId": self.user.user_id, "sessionId": self.user.session_id}
        await self.sio.connect(self.url, auth=auth, transports=["websocket"], wait_timeout=timeout)

    async def next(self, event: str, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(self.events[event].get(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.user.name}'s Socket.IO client got no {event} within {timeout:g} s") from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
        await self.session.close()


class _Journey:
    """The scripted journey; each step returns its detail line or raises AssertionError."""

    def __init__(self, stack: DemoStack, http: httpx.AsyncClient, timeout: float) -> None:
        self.stack = stack
        self.hops = stack.hops
        self.http = http
        self.timeout = timeout
        run = secrets.token_hex(3)  # the SQLite files outlive a run: fresh accounts each time
        self.alice = _User("alice", f"alice-{run}@example.com", secrets.token_urlsafe(12))
        self.bob = _User("bob", f"bob-{run}@example.com", secrets.token_urlsafe(12))
        self.post_id = ""
        self.since_post = 0

    def url(self, service: str, path: str) -> str:
        return self.stack.url(service) + path

    async def expect(
        self, event: str, source: str, target: str | None, since: int, where: Callable[[Any], bool] | None = None
    ) -> Hop:
        return await self.hops.wait_for(
            event, source=source, target=target, since=since, where=where, timeout=self.timeout
        )

    async def post(self, content: str, user: _User) -> str:
        body = {"content": content}
        answer = _json(await self.http.post(self.url(TIMELINE, "/posts"), json=body, headers=user.headers), 201)
        return str(answer["data"]["id"])

    async def moderation_status(self, post_id: str) -> str:
        answer = _json(await self.http.get(self.url(TIMELINE, f"/posts/{post_id}")), 200)
        return str(answer["data"]["moderation"]["status"])

    async def register_and_login(self) -> str:
        since = self.hops.mark()
        for user in (self.alice, self.bob):
            body = {"email": user.email, "password": user.password, "name": user.name}
            answer = _json(await self.http.post(self.url(AUTH, "/register"), json=body), 201)
            user.user_id = answer["data"]["userId"]
            await self.expect("user:created", AUTH, "broadcast", since, _has(userId=user.user_id))
            body = {"email": user.email, "password": user.password}
            answer = _json(await self.http.post(self.url(AUTH, "/login"), json=body), 200)
            user.session_id = answer["sessionId"]
            await self.expect("user:login", AUTH, "broadcast", since, _has(userId=user.user_id))
        return f"{self.alice.email} and {self.bob.email} have sessions"

    async def create_post(self) -> str:
        since = self.since_post = self.hops.mark()
        post_id = self.post_id = await self.post("Hello Exprsn! My first post on the migrated timeline.", self.alice)
        await self.expect("user:validate", TIMELINE, AUTH, since, _has(userId=self.alice.user_id))
        await self.expect(BusEvent.REPLY, AUTH, TIMELINE, since, _has(userId=self.alice.user_id, valid=True))
        await self.expect("post:created", TIMELINE, "broadcast", since, _has(id=post_id))
        await self.expect("content:moderate", TIMELINE, MODERATOR, since, _has(contentId=post_id, type="post"))
        await self.expect("notification:trigger", TIMELINE, HERALD, since, _has(type="new_post", postId=post_id))
        return f"post {post_id[:8]}… stored after exprsn-auth validated the session"

    async def moderation(self) -> str:
        hop = await self.expect("content:moderated", MODERATOR, TIMELINE, self.since_post, _has(contentId=self.post_id))

        async def updated() -> bool:
            return await self.moderation_status(self.post_id) == "approved"

        await _until(updated, "the post's moderation status", self.timeout)
        return f"approved ({hop.data['result']['reason']}); the timeline updated the post"

    async def flagged(self) -> str:
        since = self.hops.mark()
        post_id = await self.post(
            "Crypto giveaway!! Send bitcoin to this address and click here to double it", self.alice
        )
        hop = await self.expect("content:moderated", MODERATOR, TIMELINE, since, _has(contentId=post_id))
        if not hop.data["result"]["flagged"]:
            raise AssertionError(f"the moderator did not flag it: {hop.data['result']}")
        await self.expect("content:flagged", MODERATOR, "broadcast", since, _has(contentId=post_id))
        moderators = _has(type="content_flagged", moderators=True, contentId=post_id)
        await self.expect("notification:trigger", MODERATOR, HERALD, since, moderators)

        async def rejected() -> bool:
            return await self.moderation_status(post_id) == "rejected"

        await _until(rejected, "the flagged post's moderation status", self.timeout)
        return f"rejected, {hop.data['result']['reason']}; moderators notified"

    async def notification(self) -> str:
        sent = _has(userId=self.alice.user_id, status="delivered")
        hop = await self.expect("notification:sent", HERALD, TIMELINE, self.since_post, sent)
        params = {"userId": self.alice.user_id}
        answer = _json(
            await self.http.get(self.url(HERALD, "/notifications"), params=params, headers=self.alice.headers), 200
        )
        if not any(n["type"] == "new_post" and n["data"].get("postId") == self.post_id for n in answer["data"]):
            raise AssertionError("exprsn-herald has no new_post notification for the post")
        return f"notification {hop.data['notificationId'][:8]}… stored and reported as delivered"

    async def direct_message(self) -> str:
        verify = self.stack.client_ssl()
        sender = _SparkClient(self.stack.url(SPARK), verify, self.alice)
        recipient = _SparkClient(self.stack.url(SPARK), verify, self.bob)
        try:
            since = self.hops.mark()
            await sender.connect(self.timeout)
            await recipient.connect(self.timeout)
            await self.expect("user:status", SPARK, "broadcast", since, _has(userId=self.bob.user_id, status="online"))
            text = "Hi Bob, this went over exprsn-spark"
            body = {"recipientId": self.bob.user_id, "content": text}
            answer = _json(
                await self.http.post(self.url(SPARK, "/messages"), json=body, headers=self.alice.headers), 202
            )
            message_id = answer["messageId"]
            await self.expect("message:send", SPARK, SPARK, since, _has(messageId=message_id))
            received = await recipient.next("message:new", self.timeout)
            if received.get("id") != message_id or received.get("content") != text:
                raise AssertionError(f"bob's socket received {received!r}")
            await self.expect("message:delivered", SPARK, SPARK, since, _has(messageId=message_id))
            receipt = await sender.next("message:delivered", self.timeout)
            if receipt.get("messageId") != message_id:
                raise AssertionError(f"alice's socket got a receipt for {receipt!r}")
            await self.expect(
                "notification:trigger", SPARK, HERALD, since, _has(type="new_message", messageId=message_id)
            )
        finally:
            await sender.close()
            await recipient.close()
        return "bob's socket got message:new, alice's socket got message:delivered"

    async def logout(self) -> str:
        since = self.hops.mark()
        _json(await self.http.post(self.url(AUTH, "/logout"), json={"sessionId": self.alice.session_id}), 200)
        await self.expect("user:logout", AUTH, "broadcast", since)
        response = await self.http.post(
            self.url(TIMELINE, "/posts"), json={"content": "after logout"}, headers=self.alice.headers
        )
        if response.status_code != 401:
            raise AssertionError(f"a post after logout was answered {response.status_code}, not 401")
        return "session ended; the timeline now refuses it (401)"

    def steps(self) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
        return [
            ("register and log in", self.register_and_login),
            ("create a post", self.create_post),
            ("moderation result reaches the timeline", self.moderation),
            ("flagged content is caught", self.flagged),
            ("herald stores a notification", self.notification),
            ("direct message over exprsn-spark", self.direct_message),
            ("log out", self.logout),
        ]


AUTH, TIMELINE, HERALD, SPARK, MODERATOR = (
    "exprsn-auth",
    "exprsn-timeline",
    "exprsn-herald",
    "exprsn-spark",
    "exprsn-moderator",
)


async def run_journey(stack: DemoStack, out: Console, *, timeout: float = STEP_TIMEOUT_S) -> list[StepResult]:
    """Register, log in, post, moderate, notify, message and log out; assert every hop.

    A failed step is reported (✗ with the reason) and the journey goes on.
    """
    import httpx
    import socketio

    failures = (AssertionError, KeyError, TypeError, httpx.HTTPError, IPCError, socketio.exceptions.SocketIOError)
    results: list[StepResult] = []
    async with httpx.AsyncClient(verify=stack.client_ssl(), timeout=timeout) as http:
        journey = _Journey(stack, http, timeout)
        for number, (name, action) in enumerate(journey.steps(), start=1):
            out.print(f"\n[bold]Step {number}[/]  {name}")
            try:
                result = StepResult(number, name, True, await asyncio.wait_for(action(), timeout * 3))
            except TimeoutError:
                result = StepResult(number, name, False, f"timed out after {timeout * 3:g} s")
            except failures as exc:
                result = StepResult(number, name, False, str(exc) or type(exc).__name__)
            results.append(result)
            out.print(f"[{'green' if result.ok else 'red'}]{result.line()}[/]", highlight=False)
    return results


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #


_LONG_ID = re.compile(r"\b([0-9a-f]{8})[0-9a-f]{24}\b")


def _print_hop(out: Console) -> Callable[[Hop], None]:
    def show(hop: Hop) -> None:
        line = _LONG_ID.sub(r"\1…", hop.line())  # 32-hex ids: the first 8 digits say enough
        out.print(f"  [cyan]{escape(line)}[/]", highlight=False)

    return show


def _print_urls(out: Console, stack: DemoStack) -> None:
    out.print(f"\n[bold]{READY_LINE}[/]")
    rows = [
        ("Bridge", f"{stack.bridge_url}  (/health, /api/ipc/stats, /metrics)"),
        ("Dashboard", f"{stack.bridge_url}/dashboard"),
    ]
    rows += [(name, f"{running.url}  (/health, /metrics)") for name, running in stack.services.items()]
    rows.append(("CA to trust", str(stack.ca_file)))
    for label, value in rows:
        out.print(f"  {label:<17} {value}", highlight=False)
    out.print(f"  [dim]e.g. curl --cacert {stack.ca_file} {stack.bridge_url}/api/ipc/stats[/]", highlight=False)
    out.print("  [dim]Events keep printing here as services talk.[/]")


async def run_demo(
    workdir: Path,
    *,
    port_offset: int,
    once: bool,
    log_level: str,
    timeout: float,
    out: Console,
) -> int:
    """Start the stack, run the journey, then serve until stopped (or exit with ``once``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    stack = DemoStack(
        workdir,
        port_offset=port_offset,
        printer=_print_hop(out),
        log_level=log_level,
        redis_url=os.environ.get("REDIS_URL") or None,
    )
    try:
        out.print("[bold]Exprsn IPC demo[/]: the Bridge and five services over HTTPS, in this one process")
        out.print(f"  working folder: {stack.workdir}", highlight=False)
        try:
            await stack.start()
        except (DemoError, IPCError) as exc:
            out.print(f"[red]✗ cannot start the demo: {exc}[/]", highlight=False)
            return 1
        # Only now: python-socketio's clients (the workers' bridge transport) install their own
        # SIGINT handler, once, when the first one is created; ours must replace it, so that
        # Ctrl-C stops the stack gracefully instead of cancelling everything at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        backend = stack.bridge_app.bridge.backend.name if stack.bridge_app is not None else "?"
        out.print(f"  ✓ {BRIDGE_SERVICE:<17} {stack.bridge_url}  (bus: {backend})", highlight=False)
        for name, running in stack.services.items():
            out.print(f"  ✓ {name:<17} {running.url}", highlight=False)
        journey = asyncio.ensure_future(run_journey(stack, out, timeout=timeout))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({journey, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not journey.done():
            journey.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await journey
            out.print("\n[yellow]stopped during the journey[/]")
            return 1
        stopper.cancel()
        results = journey.result()
        failed = [r for r in results if not r.ok]
        if failed:
            out.print(f"\n[red]✗ {len(failed)} of {len(results)} steps failed[/]")
        else:
            out.print(f"\n[green]✓ all {len(results)} steps passed: services are talking through the Bridge[/]")
        code = 1 if failed else 0
        if once:
            return code
        _print_urls(out, stack)
        await stop.wait()
        out.print("\nstopping…")
        return code
    finally:
        await stack.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)


def demo(
    directory: Annotated[
        Path,
        typer.Option("--dir", metavar="DIR", help="Working folder for certificates, SQLite files and the demo's key."),
    ] = DEFAULT_DIR,
    port_offset: Annotated[
        int, typer.Option("--port-offset", metavar="N", help="Add N to every port (Bridge 3010, auth 3001, ...).")
    ] = 0,
    once: Annotated[bool, typer.Option("--once", help="Exit after the journey: 0 only if every step passed.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="Seconds each step waits for its events.")
    ] = STEP_TIMEOUT_S,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "WARNING",
) -> None:
    """Run the Bridge and five example services over HTTPS and walk a user journey through them."""
    configure_logging(log_level)
    if log_level.upper() == "WARNING":
        # Each service logs the (expected) development-bypass warning at start-up.
        logging.getLogger("exprsn_ipc.web.bypass").setLevel(logging.ERROR)
        logging.getLogger("exprsn_ipc.settings").setLevel(logging.ERROR)
    code = asyncio.run(
        run_demo(directory, port_offset=port_offset, once=once, log_level=log_level, timeout=timeout, out=console)
    )
    raise typer.Exit(code)
