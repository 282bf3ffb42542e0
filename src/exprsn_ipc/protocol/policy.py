"""The access policy (``IPC_POLICY``): which source may emit, request, use CRUD, run JSONLex, revoke.

A TOML file, read with :mod:`tomllib`::

    default = "deny"                 # when no rule matches ("allow" or "deny"; default "deny")
    operators = ["exprsn-admin"]     # may revoke any token and read the operator endpoints
    shared_key = ["exprsn-legacy"]   # the only services the shared broker key may still speak for

    [[rules]]
    name = "posts-to-everyone"       # named in every denial, counted per rule in /metrics
    kind = "emit"                    # emit | request | crud | jsonlex | revoke (or kinds = [...])
    sources = ["exprsn-timeline"]    # service names; "*" and fnmatch patterns; "timeline" = "exprsn-timeline"
    targets = ["broadcast", "exprsn-herald"]
    events = ["post:*"]

    [[rules]]
    name = "read-posts"
    kind = "crud"
    sources = ["*"]
    resources = ["posts"]
    operations = ["read"]

    [[rules]]
    name = "no-jsonlex-for-spark"
    effect = "deny"
    kind = "jsonlex"
    sources = ["exprsn-spark"]

The first rule that matches an action decides (``effect``, ``"allow"`` unless
said); a field left out matches anything. Replies and acknowledgements are
answers, not actions: they are always allowed. Without a policy file every
action is allowed (:data:`ALLOW_ALL`), the original's behaviour.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

from exprsn_ipc.errors import ConfigError, PolicyDeniedError
from exprsn_ipc.protocol.events import CRUD_OPERATIONS, BusEvent, crud_operation

__all__ = ["ALLOW_ALL", "KINDS", "Action", "Decision", "Policy", "Rule", "classify", "load_policy"]

Kind = Literal["emit", "request", "crud", "jsonlex", "revoke"]
#: Every kind of action a rule can name.
KINDS: Final[tuple[str, ...]] = ("emit", "request", "crud", "jsonlex", "revoke")
#: The rule named when no rule matched.
DEFAULT_RULE: Final = "default"
_RULE_KEYS: Final = frozenset(
    {"name", "effect", "kind", "kinds", "sources", "targets", "events", "resources", "operations"}
)
_TOP_KEYS: Final = frozenset({"default", "operators", "shared_key", "rules"})
#: Decisions remembered per policy; cleared when full (the set of distinct actions is small in practice).
_CACHE_SIZE: Final = 4096


def _short(name: str) -> str:
    # "exprsn-timeline" and "timeline" are one service everywhere else (namespaces, tokens): here too.
    return name.removeprefix("exprsn-")


class Action(NamedTuple):
    """One thing a source wants to do. ``target`` is the service addressed (or ``broadcast``).

    A named tuple, not a dataclass: one is built and hashed per message when a policy is on.
    """

    kind: Kind
    source: str
    target: str = "*"
    event: str = ""
    resource: str = ""
    operation: str = ""

    def describe(self) -> str:
        what = {
            "crud": f"{self.operation} on resource {self.resource!r}",
            "revoke": "revoke a token",
            "jsonlex": "run JSONLex",
        }.get(self.kind, f"{self.kind} {str(self.event)!r}")
        return f"{self.source} may not {what} (target {self.target})"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rules]]`` table; an empty pattern tuple matches anything."""

    name: str
    allow: bool
    kinds: frozenset[str]
    sources: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    operations: frozenset[str] = frozenset()

    def matches(self, action: Action) -> bool:
        if action.kind not in self.kinds:
            return False
        if self.operations and action.operation not in self.operations:
            return False
        return (
            _any(self.sources, _short(action.source))
            and _any(self.targets, _short(action.target))
            and _any(self.events, action.event)
            and _any(self.resources, action.resource)
        )

    def explain(self) -> str:
        parts = [f"{'allow' if self.allow else 'deny'} {'/'.join(sorted(self.kinds))}"]
        for label, values in (
            ("from", self.sources),
            ("to", self.targets),
            ("events", self.events),
            ("resources", self.resources),
            ("operations", tuple(sorted(self.operations))),
        ):
            if values:
                parts.append(f"{label} {', '.join(values)}")
        return f"{self.name}: " + "; ".join(parts)


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(slots=True)
class Policy:
    """A loaded policy. :meth:`decide` is cached per action; :meth:`check` raises on a denial."""

    rules: tuple[Rule, ...] = ()
    default_allow: bool = True
    operators: frozenset[str] = frozenset()
    #: Services still allowed to speak with the shared key only; ``None``: not restricted by the policy.
    shared_key: frozenset[str] | None = None
    path: Path | None = None
    _cache: dict[Action, Decision] = field(default_factory=dict, repr=False)

    @property
    def configured(self) -> bool:
        """False for :data:`ALLOW_ALL` (no ``IPC_POLICY``)."""
        return self.path is not None or bool(self.rules) or not self.default_allow

    def is_operator(self, service: str) -> bool:
        return _short(service) in self.operators

    def decide(self, action: Action) -> Decision:
        cached = self._cache.get(action)
        if cached is not None:
            return cached
        decision = Decision(self.default_allow, DEFAULT_RULE)
        for rule in self.rules:
            if rule.matches(action):
                decision = Decision(rule.allow, rule.name)
                break
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[action] = decision
        return decision

    def check(self, action: Action) -> None:
        """Raises:
        PolicyDeniedError: the policy denies ``action``; ``.rule`` names the rule (or ``default``).
        """
        decision = self.decide(action)
        if not decision.allowed:
            raise PolicyDeniedError(f"{action.describe()}: denied by policy rule {decision.rule!r}", rule=decision.rule)

    def explain(self) -> list[str]:
        """The policy in words, one line per item, for ``exprsn-ipc policy check``."""
        lines = [f"{len(self.rules)} rule(s); the first that matches decides"]
        lines += [f"  {rule.explain()}" for rule in self.rules]
        lines.append(f"  {DEFAULT_RULE}: {'allow' if self.default_allow else 'deny'} anything else")
        lines.append(f"operators: {', '.join(sorted(self.operators)) or 'none'}")
        if self.shared_key is not None:
            names = ", ".join(sorted(self.shared_key)) or "none"
            lines.append(
                f"shared-key services: {names} (every other service needs its own credential; "
                "IPC_SHARED_KEY_SERVICES, when set, wins)"
            )
        return lines

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: Path | None = None) -> Policy:
        """Build and validate a policy.

        Raises:
            ConfigError: an unknown key, a bad value, or a rule without a unique name (the message says where).
        """
        where = str(path) if path is not None else "the policy"
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_TOP_KEYS))})"
            )
        default = data.get("default", "deny")
        if default not in ("allow", "deny"):
            raise ConfigError(f'{where}: default must be "allow" or "deny", not {default!r}')
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ConfigError(f"{where}: rules must be an array of tables ([[rules]])")
        rules = tuple(_rule(raw, f"{where}: rules[{index}]") for index, raw in enumerate(raw_rules))
        names = [rule.name for rule in rules]
        repeated = sorted({name for name in names if names.count(name) > 1} | ({DEFAULT_RULE} & set(names)))
        if repeated:
            raise ConfigError(f"{where}: rule names must be unique and not {DEFAULT_RULE!r}: {', '.join(repeated)}")
        shared = data.get("shared_key")
        return cls(
            rules=rules,
            default_allow=default == "allow",
            operators=frozenset(_short(n) for n in _names(data.get("operators", []), f"{where}: operators")),
            shared_key=None if shared is None else frozenset(_short(n) for n in _names(shared, f"{where}: shared_key")),
            path=path,
        )


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a string or a list of non-empty strings")
    return tuple(value)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_RULE_KEYS))})"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} needs a name (it is named in every denial)")
    where = f"{where} ({name})"
    effect = raw.get("effect", "allow")
    if effect not in ("allow", "deny"):
        raise ConfigError(f'{where}: effect must be "allow" or "deny", not {effect!r}')
    if "kind" in raw and "kinds" in raw:
        raise ConfigError(f"{where}: give kind or kinds, not both")
    kinds = _names(raw.get("kind", raw.get("kinds", list(KINDS))), f"{where}: kind")
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        raise ConfigError(f"{where}: unknown kind(s) {', '.join(bad)} (known: {', '.join(KINDS)})")
    operations = _names(raw.get("operations", []), f"{where}: operations") if "operations" in raw else ()
    bad = sorted(set(operations) - set(CRUD_OPERATIONS))
    if bad:
        raise ConfigError(f"{where}: unknown operation(s) {', '.join(bad)} (known: {', '.join(CRUD_OPERATIONS)})")

    def patterns(key: str, *, service: bool = False) -> tuple[str, ...]:
        if key not in raw:
            return ()
        values = _names(raw[key], f"{where}: {key}")
        return () if "*" in values else tuple(_short(v) if service else v for v in values)

    return Rule(
        name=name,
        allow=effect == "allow",
        kinds=frozenset(kinds),
        sources=patterns("sources", service=True),
        targets=patterns("targets", service=True),
        events=patterns("events"),
        resources=patterns("resources"),
        operations=frozenset(operations),
    )


#: No policy: everything allowed (development's default; production warns).
ALLOW_ALL: Final = Policy()


def load_policy(path: Path | str | None) -> Policy:
    """Read ``IPC_POLICY``; :data:`ALLOW_ALL` when ``path`` is None.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or is not a valid policy.
    """
    if path is None:
        return ALLOW_ALL
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"IPC_POLICY: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"IPC_POLICY: {path} is not valid TOML: {exc}") from None
    return Policy.from_mapping(data, path=path)


def classify(
    source: str, target: str, event: str, *, request: bool, data: Any = None, operation: str = ""
) -> Action | None:
    """The action an envelope (or a client's call) is; None for answers (replies, acks), always allowed."""
    if event in (BusEvent.REPLY, BusEvent.ACK):
        return None
    if event == BusEvent.JSONLEX_EXECUTE or operation == "jsonlex":
        return Action("jsonlex", source, target, event)
    crud = crud_operation(event)
    if crud is not None:
        resource = data.get("resource") if isinstance(data, dict) else None
        return Action("crud", source, target, event, resource if isinstance(resource, str) else "", crud)
    return Action("request" if request else "emit", source, target, event)
