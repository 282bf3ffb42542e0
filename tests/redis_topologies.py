"""Real Redis topologies for tests, on free loopback ports, stopped afterwards.

with SentinelSet() as s:   # one master, one replica, three sentinels
    s.url                  # redis+sentinel://127.0.0.1:p1,.../ipc-master/0
    s.master.kill()        # a failover follows within a few seconds

with RedisCluster3() as c: # three masters, slots spread by redis-cli --cluster create
    c.url                  # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
"""

from __future__ import annotations

import random
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from .redis_server import RedisServer, find_redis_server, free_port, ping

__all__ = ["MASTER_NAME", "RedisCluster3", "SentinelSet"]

MASTER_NAME = "ipc-master"
#: Sentinel timings: a dead master is noticed after 1 s, and a failover is retried after 3 s.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
#: Sentinel's internal periods (``SENTINEL DEBUG``), shortened as the two above are: INFO to
#: each instance every 0.5 s (10 s by default) and hellos every 0.25 s (2 s). A master that
#: comes back after a failover is turned into a replica of the new one after four hello
#: periods without being down: 1 s instead of 8 s, then at the next INFO.
SENTINEL_DEBUG = ("info-period", "500", "publish-period", "250")


class Sentinel:
    """One ``redis-server --sentinel`` process."""

    def __init__(self, port: int, myid: str, workdir: Path) -> None:
        self.port = port
        self.myid = myid
        self.workdir = workdir
        self.conf = workdir / f"sentinel-{self.port}.conf"
        self.log = workdir / f"sentinel-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, master_port: int, replica_port: int, others: list[Sentinel]) -> None:
        # Known replica and peers written in advance: no waiting for hello messages (2 s apart).
        known = "".join(f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {o.port} {o.myid}\n" for o in others)
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\nsentinel myid {self.myid}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {replica_port}\n{known}"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n",
            "utf-8",
        )
        self.process = subprocess.Popen(
            [find_redis_server(), str(self.conf), "--sentinel", "--logfile", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, deadline: float) -> None:
        while not ping(self.port):
            if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sentinel on {self.port} did not start:\n{self.log.read_text('utf-8')[-2000:]}")
            time.sleep(0.02)

    def tune(self) -> None:
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            client.execute_command("SENTINEL", "DEBUG", *SENTINEL_DEBUG)

    def master_address(self) -> tuple[str, int]:
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return host.decode(), int(port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class SentinelSet:
    """A master, a replica of it and three sentinels watching them (quorum 2)."""

    def __init__(self) -> None:
        # No 5 s diskless-sync delay before a replica's first sync (Redis 7's default).
        quick = ("--repl-diskless-sync-delay", "0")
        self.master = RedisServer(extra_args=quick)
        self.replica = RedisServer(extra_args=(*quick, "--replicaof", "127.0.0.1", str(self.master.port)))
        self.sentinels: list[Sentinel] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    @property
    def sentinel_hosts(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        deadline = time.monotonic() + 15
        with redis.Redis(port=self.replica.port) as client:
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync with the master")
                time.sleep(0.05)
        self.sentinels = [Sentinel(free_port(), secrets.token_hex(20), self.master.workdir) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start(self.master.port, self.replica.port, [o for o in self.sentinels if o is not sentinel])
        for sentinel in self.sentinels:
            sentinel.wait_ready(deadline)
            sentinel.tune()
        # Each sentinel must know the replica and the others before a failover can be agreed.
        while not all(self._knows_everyone(s) for s in self.sentinels):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not discover each other")
            time.sleep(0.1)
        return self

    def _knows_everyone(self, sentinel: Sentinel) -> bool:
        with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
            info = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        # redis-py parses the reply into a dict of bytes.
        return int(info[b"num-slaves"]) >= 1 and int(info[b"num-other-sentinels"]) >= 2

    def wait_failover(self, timeout: float = 20.0) -> float:
        """Poll (bounded) until every sentinel names the replica as master; returns when (monotonic)."""
        deadline = time.monotonic() + timeout
        wanted = ("127.0.0.1", self.replica.port)
        while not all(s.master_address() == wanted for s in self.sentinels):
            if time.monotonic() > deadline:
                raise AssertionError(f"no failover to {wanted} within {timeout} s")
            time.sleep(0.05)
        return time.monotonic()

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.close()
        self.master.close()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too (both must be below 65536)."""
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster3:
    """Three cluster-enabled masters joined by ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self) -> None:
        self.nodes = [
            RedisServer(
                cluster_port(),
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ),
            )
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> RedisCluster3:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-yes"],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        with redis.Redis(port=node.port, socket_timeout=1) as client:
            return bool(client.cluster("INFO").get("cluster_state") == "ok")

    def flush(self) -> None:
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                client.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
