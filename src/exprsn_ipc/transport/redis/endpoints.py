"""Where Redis is: one server, a master found through Sentinel, or a Cluster.

Every Redis connection of exprsn-ipc starts from one URL, so the topology travels
in the URL too (``Settings.effective_redis_url`` builds it from ``REDIS_SENTINELS``
or ``REDIS_CLUSTER_NODES``):

- ``redis://``, ``rediss://``, ``unix://``: one server (as before);
- ``redis+sentinel://[user:pw@]h1:p1,h2:p2/<master>[/<db>][?options]``: the master
  named ``<master>``, asked of the sentinels before every new connection, so a
  failover is followed by reconnecting (``rediss+sentinel://`` for TLS);
- ``redis+cluster://[user:pw@]h1:p1,h2:p2[?options]``: a Redis Cluster reached
  through these seed nodes (``rediss+cluster://`` for TLS).

The credentials, the database and the TLS options (redis-py's query names) apply
to the data nodes; sentinels are asked without credentials, over TLS when the
data nodes use it. :class:`RedisEndpoint` builds the redis-py clients and, for the
lean RESP connections, :meth:`RedisEndpoint.resolve` answers where to connect now.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import parse_url
from redis.crc import key_slot

from exprsn_ipc.errors import ConfigError, TransportError
from exprsn_ipc.protocol.constants import BROADCAST, channel_for
from exprsn_ipc.transport.redis.resp import RedisAddress, RespConnection

__all__ = ["PUBSUB_HOME", "EndpointKind", "RedisEndpoint", "redact_url"]

EndpointKind = Literal["single", "sentinel", "cluster"]

#: In a cluster, classic pub/sub lives on the node serving this name's slot (the
#: broadcast channel's): a PUBLISH counts only the subscribers of the node it reached,
#: so every publisher and subscriber must meet on one node for the counts to mean anything.
PUBSUB_HOME: Final = channel_for(BROADCAST)
#: Timeouts of one question to a sentinel or a cluster node.
_ASK_TIMEOUT_S: Final = 1.0

_TOPOLOGY_SCHEMES: Final[dict[str, tuple[EndpointKind, str]]] = {
    "redis+sentinel": ("sentinel", "redis"),
    "rediss+sentinel": ("sentinel", "rediss"),
    "redis+cluster": ("cluster", "redis"),
    "rediss+cluster": ("cluster", "rediss"),
}


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and errors); works for
    every scheme above, several hosts included."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, hosts = parts.netloc.rsplit("@", 1)
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def _hosts(text: str, what: str) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{what}: expected host:port, not {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigError(f"{what}: no host:port given")
    return tuple(nodes)


@dataclass(frozen=True)
class RedisEndpoint:
    """One parsed Redis URL: its topology, credentials, database and TLS.

    Attributes:
        kind: ``single``, ``sentinel`` or ``cluster``.
        nodes: the server (single), the sentinels, or the cluster's seed nodes.
        master: the Sentinel master name (sentinel only).
        address: credentials, db and TLS of the data nodes (host/port: the first node).
        describe: the URL without its password.
    """

    kind: EndpointKind
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...]
    address: RedisAddress
    describe: str
    master: str | None = None
    #: A single-server URL carrying the same credentials, db and TLS options (redis-py kwargs).
    base_url: str = field(default="", repr=False)

    @classmethod
    def from_url(cls, url: str) -> RedisEndpoint:
        """Parse any supported URL.

        Raises:
            ConfigError: an unknown scheme, no hosts, no master name, or a malformed option.
        """
        parts = urlsplit(url)
        topology = _TOPOLOGY_SCHEMES.get(parts.scheme)
        if topology is None:
            address = RedisAddress.from_url(url)
            return cls("single", url, ((address.host, address.port),), address, redact_url(url), base_url=url)
        kind, data_scheme = topology
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        what = "REDIS_SENTINELS" if kind == "sentinel" else "REDIS_CLUSTER_NODES"
        nodes = _hosts(unquote(hostlist), what)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        master: str | None = None
        if kind == "sentinel":
            if not segments:
                raise ConfigError("a redis+sentinel:// URL needs the master name as its path (REDIS_SENTINEL_MASTER)")
            master, segments = segments[0], segments[1:]
        if kind == "cluster" and segments and segments != ["0"]:
            raise ConfigError("Redis Cluster has database 0 only; leave the db out of the URL")
        netloc = f"{userinfo}@" if userinfo else ""
        host, port = nodes[0]
        base = urlunsplit(
            (data_scheme, f"{netloc}{_bracket(host)}:{port}", f"/{segments[0] if segments else 0}", parts.query, "")
        )
        address = RedisAddress.from_url(base)
        return cls(kind, url, nodes, address, redact_url(url), master=master, base_url=base)

    # redis-py clients ------------------------------------------------------------
    def client(
        self,
        *,
        client_name: str | None,
        socket_timeout: float,
        connect_timeout: float,
        retries: int = 1,
        max_connections: int | None = None,
    ) -> Redis:
        """A redis-py client for commands on this endpoint (a ``RedisCluster`` for a cluster,
        typed as ``Redis``: the commands exprsn-ipc sends exist on both).

        ``retries`` quick retries (≤ 50 ms apart) replace a connection gone stale
        with a restart or a failover; ``max_connections`` makes the pool block
        instead of failing when it is exhausted (single server only).
        """
        retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), retries) if retries else Retry(NoBackoff(), 0)
        options: dict[str, Any] = {
            "decode_responses": False,
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": socket_timeout,
            "socket_keepalive": True,
            "client_name": client_name,
            "retry": retry,
        }
        if self.kind == "single":
            if max_connections is None:
                return Redis.from_url(self.url, **options)
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=max_connections, timeout=socket_timeout, **options
            )
            client = Redis(connection_pool=pool)
            client.auto_close_connection_pool = True
            return client
        kwargs = _connection_kwargs(self.base_url)
        if self.kind == "sentinel":
            return self._sentinel_client(kwargs, options)
        kwargs.pop("db", None)
        tls = kwargs.pop("connection_class", None) is not None
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
            ssl=tls,
            **{**kwargs, **options},
        )
        return cast(Redis, cluster)

    def _sentinel_client(self, kwargs: dict[str, Any], options: dict[str, Any]) -> Redis:
        if kwargs.pop("connection_class", None) is not None:
            kwargs["connection_class"] = SentinelManagedSSLConnection
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": _ASK_TIMEOUT_S,
            "socket_timeout": _ASK_TIMEOUT_S,
        }
        if self.address.tls is not None:
            sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl")})
            sentinel_kwargs["ssl"] = True
        sentinel = _Sentinel(list(self.nodes), sentinel_kwargs=sentinel_kwargs, **kwargs, **options)
        return cast(Redis, sentinel.master_for(cast(str, self.master), redis_class=Redis, **kwargs, **options))

    # The lean connections ----------------------------------------------------------
    async def resolve(self, channel: str | None = None) -> RedisAddress:
        """Where a lean RESP connection goes now: the server, the current master (asked of
        the sentinels), or the cluster node serving ``channel``'s slot (classic pub/sub:
        :data:`PUBSUB_HOME`'s).

        Raises:
            TransportError: no sentinel knows the master, or no seed node answered.
        """
        if self.kind == "single":
            return self.address
        if self.kind == "sentinel":
            host, port = await self._ask_sentinels()
        else:
            host, port = await self._slot_owner(key_slot((channel or PUBSUB_HOME).encode()))
        return replace(self.address, host=host, port=port)

    async def _ask_sentinels(self) -> tuple[str, int]:
        errors: list[str] = []
        # Start at a random sentinel, so a dead one costs every client a timeout only sometimes.
        start = random.randrange(len(self.nodes))  # noqa: S311 (load spreading, not crypto)
        for host, port in self.nodes[start:] + self.nodes[:start]:
            sentinel = RedisAddress(host=host, port=port, tls=self.address.tls)
            try:
                connection = await RespConnection.open(
                    sentinel,
                    describe=f"sentinel {host}:{port}",
                    client_name=None,
                    connect_timeout=_ASK_TIMEOUT_S,
                    reply_timeout=_ASK_TIMEOUT_S,
                )
                try:
                    reply = await connection.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", cast(str, self.master))
                finally:
                    connection.close()
            except TransportError as exc:
                errors.append(str(exc))
                continue
            if isinstance(reply, list) and len(reply) == 2:
                return reply[0].decode(), int(reply[1])
            errors.append(f"sentinel {host}:{port} does not know a master named {self.master!r}")
        raise TransportError(f"no sentinel of {self.describe} named the master: {'; '.join(errors)}")

    async def _slot_owner(self, slot: int) -> tuple[str, int]:
        errors: list[str] = []
        for host, port in self.nodes:
            node = replace(self.address, host=host, port=port)
            try:
                connection = await RespConnection.open(
                    node,
                    describe=f"cluster node {host}:{port}",
                    client_name=None,
                    connect_timeout=_ASK_TIMEOUT_S,
                    reply_timeout=_ASK_TIMEOUT_S,
                )
                try:
                    ranges = await connection.command("CLUSTER", "SLOTS")
                finally:
                    connection.close()
            except TransportError as exc:
                errors.append(str(exc))
                continue
            for first, last, owner, *_ in ranges:
                if first <= slot <= last:
                    owner_host = owner[0].decode() or host  # an empty host: the node we asked
                    return owner_host, int(owner[1])
            errors.append(f"cluster node {host}:{port} serves no node for slot {slot}")
        raise TransportError(f"no node of {self.describe} answered CLUSTER SLOTS: {'; '.join(errors)}")


# Typed views of two untyped library functions.
_parse_url = cast(Callable[[str], dict[str, Any]], parse_url)
_Sentinel = cast(Callable[..., Sentinel], Sentinel)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _connection_kwargs(url: str) -> dict[str, Any]:
    """redis-py's keyword arguments for ``url`` (credentials, db, TLS), without the address."""
    kwargs = _parse_url(url)
    for name in ("host", "port", "path"):
        kwargs.pop(name, None)
    return kwargs


def is_cluster(client: Redis) -> bool:
    """True for a client :meth:`RedisEndpoint.client` made for a Cluster."""
    return isinstance(client, RedisCluster)


async def mget_any(client: Redis, keys: list[Any]) -> list[Any]:
    """MGET on any endpoint: in a Cluster, one MGET per slot (not atomic across slots)."""
    if isinstance(client, RedisCluster):
        return list(await client.mget_nonatomic(keys))
    return list(await client.mget(keys))
