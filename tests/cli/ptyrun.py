"""Run a command on a pseudo-terminal, as a person at a terminal would, and press Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from dataclasses import dataclass, field


@dataclass
class PtyProcess:
    """A child process whose controlling terminal is a pty we hold the other end of."""

    pid: int
    fd: int
    output: bytearray = field(default_factory=bytearray)

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str], cwd: str) -> PtyProcess:
        pid, fd = pty.fork()
        if pid == 0:  # the child: its session's controlling terminal is the pty
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        return cls(pid, fd)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not chunk:
            return False
        self.output.extend(chunk)
        return True

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def expect(self, needle: str, timeout: float) -> None:
        """Read until ``needle`` appears; fail with everything read so far."""
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"{needle!r} did not appear; output so far:\n{self.text}")

    def ctrl_c(self) -> None:
        """Type Ctrl-C: the terminal sends SIGINT to the foreground process group."""
        os.write(self.fd, b"\x03")

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Read to the end and return the exit status (negative: killed by that signal)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                while self._read(0.05) and select.select([self.fd], [], [], 0)[0]:
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            self._read(0.2)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        raise AssertionError(f"still running after {timeout} s; output:\n{self.text}")
