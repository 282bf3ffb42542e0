"""Who may read the Bridge's operator endpoints: the detail of ``/api/ipc/stats``, ``/metrics``, ``/dashboard``.

They show every service's registry record (pid, host), connections, counters and
traffic. In production they need an **operator credential** unless the Bridge
listens on loopback only (``BRIDGE_HOST``) or ``IPC_PUBLIC_STATS=true``:

* the bearer secret ``IPC_OPERATOR_TOKEN`` (``Authorization: Bearer …``,
  ``x-broker-token`` or the dashboard's ``?token=``), compared in constant time; or
* a login token of a service the access policy lists as an operator
  (``operators = [...]`` in ``IPC_POLICY``).

Elsewhere (development, a loopback-only Bridge) nothing changes: stats and metrics
answer as before and the dashboard keeps its own rule (``bridge/dashboard``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from exprsn_ipc.errors import OperatorRequiredError, TokenError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.settings import Settings

if TYPE_CHECKING:
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["OperatorGate"]

log = get_logger("exprsn_ipc.bridge")


class OperatorGate:
    """Decides whether a caller of an operator endpoint gets the detail.

    Args:
        settings: ``NODE_ENV``, ``BRIDGE_HOST``, ``IPC_PUBLIC_STATS``, ``IPC_OPERATOR_TOKEN``.
        login_source: verifies a login token and returns its ``source`` (raises ``TokenError``).
        operators: the services the policy lists as operators (read when asked, so a reloaded
            policy applies at once).
    """

    def __init__(
        self,
        settings: Settings,
        login_source: Callable[[str], str],
        operators: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self.settings = settings
        self._login_source = login_source
        self._operators = operators
        secret = settings.ipc_operator_token
        self._secret = secret.get_secret_value().encode("utf-8") if secret is not None else None

    @classmethod
    def for_bridge(cls, bridge: Bridge) -> OperatorGate:
        """The gate of ``bridge``: its verifier for login tokens, its policy's operators."""
        return cls(
            bridge.settings,
            lambda token: str(bridge.verifier.verify_login(token).get("source")),
            lambda: bridge.policy.policy.operators,
        )

    @property
    def required(self) -> bool:
        """True when the detail needs an operator credential (production, reachable from other machines)."""
        s = self.settings
        return s.is_production and not s.ipc_public_stats and not s.bridge_loopback_only

    def is_operator(self, credential: str | None) -> bool:
        """True when ``credential`` is the operator secret or an operator service's login token."""
        if not credential:
            return False
        if self._secret is not None and hmac.compare_digest(credential.encode("utf-8"), self._secret):
            return True
        operators = self._operators()
        if not operators:
            return False
        try:
            return self._login_source(credential) in operators
        except TokenError:
            return False

    def check(self, credential: str | None) -> None:
        """Pass when the caller may see the detail.

        Raises:
            OperatorRequiredError: the detail needs an operator credential and ``credential`` is none.
        """
        if not self.required or self.is_operator(credential):
            return
        raise OperatorRequiredError(
            "this Bridge is reachable from other machines in production: the detail of /api/ipc/stats, "
            "/metrics and /dashboard needs an operator credential (Authorization: Bearer <IPC_OPERATOR_TOKEN>, "
            "or a login token of a service listed in the policy's operators); "
            "set IPC_PUBLIC_STATS=true to publish it"
        )
