"""The access policy at the Bridge: checks, denials counted per rule, logged once, and who owns a token.

Every action a client takes through the Bridge is checked here before it is
signed or published (``bridge/core.py``, ``bridge/requests.py``,
``bridge/events.py``, ``bridge/http.py``). A denial is a
:class:`~exprsn_ipc.errors.PolicyDeniedError` (``FORBIDDEN``, naming the rule): the
caller's handler answers it like any refusal and the connection stays up.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client.core import Metric

from exprsn_ipc.errors import PolicyDeniedError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.metrics import counter
from exprsn_ipc.protocol.envelope import Envelope
from exprsn_ipc.protocol.policy import Action, Policy, classify, load_policy
from exprsn_ipc.settings import Settings

__all__ = ["OWN_TOKENS_RULE", "PolicyGuard", "TokenOwners"]

log = get_logger("exprsn_ipc.bridge")

#: The rule named when a service revokes a token that is not its own.
OWN_TOKENS_RULE: Final = "revoke:own-tokens-only"
#: Token ids whose owner a Bridge remembers (about 120 bytes each).
OWNER_ENTRIES: Final = 100_000


class TokenOwners:
    """Which service each token id the Bridge saw belongs to, until the token expires.

    Filled from the envelopes a worker publishes through this Bridge, the tokens the
    Bridge signs for its clients, and login tokens; bounded (oldest forgotten first).
    """

    def __init__(self, max_entries: int = OWNER_ENTRIES) -> None:
        self.max_entries = max_entries
        # A plain dict keeps insertion order and is the cheapest to write: this runs per envelope.
        self._owners: dict[str, tuple[str, float]] = {}

    def add(self, token_id: str, service: str, expires: float) -> None:
        owners = self._owners
        owners[token_id] = (service, expires)
        if len(owners) > self.max_entries:
            # Forget the oldest eighth at once, so eviction costs O(1) per add on average.
            for old in list(itertools.islice(owners, self.max_entries // 8 or 1)):
                del owners[old]

    def owner(self, token_id: str) -> str | None:
        entry = self._owners.get(token_id)
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]


class PolicyGuard:
    """The Bridge's policy: ``check*`` raise :class:`PolicyDeniedError`; denials counted per source and rule."""

    def __init__(self, settings: Settings, policy: Policy | None = None) -> None:
        self.policy = policy if policy is not None else load_policy(settings.ipc_policy)
        self.enforcing = self.policy.configured
        self.owners = TokenOwners()
        #: Denials per ``(source, rule)``, exported as ``exprsn_bridge_policy_denied_total``.
        self.denied: collections.Counter[tuple[str, str]] = collections.Counter()
        self._logged: set[tuple[str, str]] = set()
        if not self.enforcing and settings.is_production:
            log.warning(
                "no access policy (IPC_POLICY): every authenticated service may emit, request, use CRUD and "
                "JSONLex anywhere; write one (docs/security.md) and check it with `exprsn-ipc policy check FILE`"
            )

    def check(self, action: Action | None) -> None:
        if action is None or not self.enforcing:
            return
        try:
            self.policy.check(action)
        except PolicyDeniedError as exc:
            self._denied(action.source, exc)
            raise

    def check_envelope(self, source: str, envelope: Envelope) -> None:
        """A worker's envelope (its ``source`` already checked to be the connection's service)."""
        if not self.enforcing:
            return
        request = envelope.operation == "request" or "requestId" in envelope.metadata
        self.check(classify(source, envelope.target, envelope.event, request=request, data=envelope.data))

    def check_call(self, source: str, target: str, event: str, *, request: bool, data: Any = None) -> None:
        """A client's emit or call that the Bridge signs for it."""
        if self.enforcing:
            self.check(classify(source, target, event, request=request, data=data))

    def check_revoke(self, source: str, token_id: str, owner: str | None) -> None:
        """A service may revoke its own tokens (policy permitting); operators any.

        ``owner``: the token's ``source`` when the caller presented the token, else None
        (then the Bridge's memory of the ids it saw decides; an id it never saw is allowed).

        Raises:
            PolicyDeniedError: not allowed, naming :data:`OWN_TOKENS_RULE` or the policy's rule.
        """
        if self.policy.is_operator(source):
            return
        self.check(Action("revoke", source))
        owner = owner or self.owners.owner(token_id)
        # An id this Bridge never saw (a token handed out over HTTP, or published through
        # another Bridge or straight onto Redis) has no known owner: allowed, see docs/security.md.
        if owner is not None and owner != source:
            exc = PolicyDeniedError(
                f"{source} may revoke its own tokens only: token {token_id[:64]} belongs to {owner} "
                f"(policy rule {OWN_TOKENS_RULE!r})",
                rule=OWN_TOKENS_RULE,
            )
            self._denied(source, exc)
            raise exc

    def _denied(self, source: str, exc: PolicyDeniedError) -> None:
        key = (source, exc.rule)
        self.denied[key] += 1
        if key not in self._logged and len(self._logged) < 10_000:
            self._logged.add(key)
            log.warning("policy: %s (logged once per source and rule)", exc)

    # A MetricSource -----------------------------------------------------------------
    async def refresh(self) -> None:
        return None

    def collect(self) -> Iterator[Metric]:
        yield counter(
            "exprsn_bridge_policy_denied",
            "Actions the access policy denied, by source and rule.",
            ["source", "rule"],
            (([source, rule], n) for (source, rule), n in sorted(self.denied.items())),
        )
