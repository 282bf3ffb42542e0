"""A throw-away ``redis-server`` for tests: free loopback port, no persistence
(unless ``appendonly=True``: an fsync-always AOF, so data survives ``restart()``).

    server = RedisServer()
    server.start()          # waits until it answers PING
    server.url              # redis://127.0.0.1:<port>/0
    server.stop()           # SIGTERM + wait (fault tests)
    server.restart()        # same port again
    server.close()          # stop for good

The binary comes from the Debian package ``redis-server``; when it is missing the
fixture fails with an install hint (it never skips).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "find_redis_server"]

INSTALL_HINT = "redis-server is required for the Redis tests: `sudo apt-get install redis-server` (Debian/Ubuntu)"


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary, or fail the test run loudly."""
    path = shutil.which("redis-server")
    if path is None and os.path.exists("/usr/bin/redis-server"):
        path = "/usr/bin/redis-server"
    if path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.2) -> bool:
    """True if something on ``port`` answers PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``restart()`` keeps the port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 10.0,
        appendonly: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = find_redis_server()
        #: More ``--option value`` arguments (replicaof, cluster-enabled, ACL files, TLS ...).
        self.extra_args = extra_args
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.appendonly = appendonly
        self.workdir = Path(tempfile.mkdtemp(prefix="exprsn-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        if self.running:
            return self
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while time.monotonic() < deadline and self.process.poll() is None:
                if ping(self.port):
                    return self
                time.sleep(0.02)
            if self.process.poll() is None:
                self._kill()
                raise RuntimeError(f"redis-server on port {self.port} gave no PONG within {self.startup_timeout}s")
            # It exited (e.g. the port was not free yet): try again until the deadline.
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis-server failed to start on port {self.port}:\n{self._tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait until the process has exited and the port is closed."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL (a crashed host, as far as its clients can tell) and wait."""
        self._kill()

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
            process.wait(5)

    def _tail(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
