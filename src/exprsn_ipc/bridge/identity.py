"""Authentication at the Bridge: exactly one service per connection, proved by its own
credential, by the shared broker key where that is still allowed, or by the dev bypass.

The revocation watcher re-reads the credentials' revocation list every
``IPC_CREDENTIAL_RECHECK`` seconds and closes the live connections of a revoked (or
expired) credential; the next connection with it is refused.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from exprsn_ipc.bridge.connection import Identity
from exprsn_ipc.certs.handshake import is_handshake
from exprsn_ipc.certs.identity import ServiceIdentities, parse_shared_key_list
from exprsn_ipc.errors import AuthError, CredentialError, IPCError, TokenError, TokenPurposeError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.net import is_loopback
from exprsn_ipc.protocol.constants import TRUST_BYPASS, TRUST_CREDENTIAL, TRUST_SHARED_KEY
from exprsn_ipc.protocol.tokens import token_lifetime

if TYPE_CHECKING:
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["DEV_BYPASS_SOURCE", "Authenticator"]

log = get_logger("exprsn_ipc.bridge")

DEV_BYPASS_SOURCE = "exprsn-dev-bypass"


class Authenticator:
    """The Bridge's :meth:`~exprsn_ipc.bridge.core.Bridge.authenticate`, and the credential watcher."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        settings = bridge.settings
        self.identities = ServiceIdentities(
            settings.certs_dir,
            shared_key=parse_shared_key_list(settings.ipc_shared_key_services, bridge.policy.policy.shared_key),
            recheck_s=settings.ipc_credential_recheck,
        )
        self._warned: set[str] = set()

    def authenticate(
        self, token: str | None, peer: str | None, *, service: str | None = None, same_origin: bool = True
    ) -> Identity:
        settings = self.bridge.settings
        if token and token != "true":
            if is_handshake(token):
                return self._credential(token, service)
            try:
                claims = self.bridge.verifier.verify_login(token)
            except TokenPurposeError as exc:
                # A token lifted from a message: refused with its own code, so it shows in the counters.
                raise AuthError(f"invalid broker token: {exc}", code=exc.code) from None
            except TokenError as exc:
                raise AuthError(f"invalid broker token: {exc}") from None
            source = claims.get("source")
            if not isinstance(source, str):
                raise AuthError("broker token has no source")
            if service is not None and source != service:
                raise AuthError(f"broker token was issued to {source}, not {service}")
            self.identities.check_shared_key(source)
            login_id, expires = token_lifetime(claims)
            self.bridge.policy.owners.add(login_id, source, expires)
            return Identity(source, False, claims, trust=TRUST_SHARED_KEY)
        if settings.bypass_enabled and is_loopback(peer):
            if not same_origin:
                raise AuthError("the development bypass is not for web pages of other sites (cross-site Origin)")
            return Identity(service or DEV_BYPASS_SOURCE, True, None, trust=TRUST_BYPASS)
        if settings.dev_bypass and not settings.bypass_enabled:
            raise AuthError("missing broker token (DEV_BYPASS is ignored unless NODE_ENV=development)")
        raise AuthError("missing broker token")

    def _credential(self, token: str, service: str | None) -> Identity:
        if service is None:
            raise CredentialError("a handshake token opens a worker connection (/ipc/<service>), not an HTTP call")
        claims, cert = self.identities.admit_handshake(token, service)
        self.bridge.policy.owners.add(str(claims["id"]), service, float(claims["exp"]))
        return Identity(
            service,
            False,
            claims,
            trust=TRUST_CREDENTIAL,
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    async def watch(self) -> None:
        """Close the live connections whose credential was revoked or has expired (runs until cancelled)."""
        while True:
            await asyncio.sleep(self.identities.recheck_s)
            try:
                await self.check_live()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not re-check the service credentials")

    async def check_live(self) -> int:
        """One pass of :meth:`watch`: how many connections it closed."""
        try:
            self.identities.refresh()
        except IPCError as exc:
            # A revocation list the CA did not sign: keep the last good one, say so once.
            if "crl" not in self._warned:
                self._warned.add("crl")
                log.error("credentials: %s", exc)
        revoked, now, closed = self.identities.trust.revoked, time.time(), 0
        for conn in list(self.bridge.connections.values()):
            if conn.serial is None:
                continue
            why = self._ended(conn.serial, conn.not_after, revoked, now)
            if why is None:
                continue
            code = "CREDENTIAL_REVOKED" if why == "revoked" else "CREDENTIAL_EXPIRED"
            self.bridge.stats.reject(conn.service, code)
            log.warning("closing %s on %s: its credential %x %s", conn.service, conn.sid, conn.serial, why)
            await conn.link.close(f"{code}: the credential was {why}")
            closed += 1
        return closed

    @staticmethod
    def _ended(serial: int, not_after: float | None, revoked: Any, now: float) -> str | None:
        if serial in revoked:
            return "revoked"
        if not_after is not None and now > not_after:
            return "expired"
        return None
