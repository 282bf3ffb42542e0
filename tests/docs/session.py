"""A terminal session for the documentation: one bash that keeps its folder and variables.

A reader types each line into one terminal, so ``cd``, ``export`` and
``. .venv/bin/activate`` carry over from block to block; so they do here. A line
whose comment names a terminal (``# Terminal 2: ...``) is a long-running
command the reader starts elsewhere: it runs in the background from the session's
current folder and variables, the session waits until it says it is listening,
and when the block ends it is stopped with SIGTERM and must exit 0 with no traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .blocks import Block

#: A long-running command's comment: it belongs in another terminal.
TERMINAL = re.compile(r"#\s*Terminal\s+\d+", re.I)
#: A comment ``# prints "text"``: the command's output must contain ``text``.
PRINTS = re.compile(r'#.*?\bprints\s+"([^"]+)"')
#: What our long-running commands print once they serve.
READY = re.compile(r"listening on|listening as|Everything is running")


@dataclass
class Background:
    command: str
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text("utf-8", "replace")


@dataclass
class Session:
    """``bash`` reading commands from us, as from a reader's keyboard."""

    cwd: Path
    env: dict[str, str]
    runblock: Path
    command_timeout: float = 240.0
    ready_timeout: float = 120.0
    background: list[Background] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._marker = f"__doc_{secrets.token_hex(4)}__"
        self._bash = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._files = 0
        self._terminals = 1  # the session itself is Terminal 1

    # -- running ---------------------------------------------------------------
    def run_block(self, block: Block) -> None:
        """Run one block (or write it, for ``file=``); fail with the block's place and output."""
        if block.kind == "file":
            self.shell(f"cat > {block.file_name} <<'{self._marker}'\n{block.code}{self._marker}", block)
        elif block.language == "python":
            self._files += 1
            script = self.cwd.parent / f"block-{self._files}.py"
            script.write_text(block.code, "utf-8")
            self.shell(f"python {self.runblock} {script}", block)
        else:
            started = len(self.background)
            try:
                for line in logical_lines(block.code):
                    if TERMINAL.search(line):
                        self.start_background(line, block)
                    else:
                        self._expect_printed(line, self.shell(line, block), block)
            except BaseException:
                self.stop_background(started)  # the first failure is the one to report
                raise
            # The reader stops what a block started before going on (Ctrl-C in that terminal).
            problems = self.stop_background(started)
            assert problems == [], f"{block.where}:\n" + "\n".join(problems)

    def shell(self, command: str, block: Block) -> str:
        """Type ``command`` into the session; its exit status must be 0."""
        assert self._bash.stdin is not None and self._bash.stdout is not None
        # The braces keep cd/export in this shell; /dev/null keeps a command from
        # reading the rest of the session as its input.
        self._bash.stdin.write(f'{{ {command}\n}} </dev/null\necho "{self._marker} $?"\n'.encode())
        self._bash.stdin.flush()
        stream = self._bash.stdout.fileno()
        buffer = b""
        end = f"{self._marker} ".encode()
        deadline = time.monotonic() + self.command_timeout
        while not (index := buffer.find(end)) >= 0 or not buffer.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{block.where}: `{command}` still runs after {self.command_timeout} s:\n{buffer.decode()}"
                )
            if select.select([stream], [], [], min(left, 1.0))[0]:
                chunk = os.read(stream, 65536)
                if not chunk:
                    raise AssertionError(f"{block.where}: the shell ended during `{command}`:\n{buffer.decode()}")
                buffer += chunk
        status = int(buffer[index + len(end) :].split()[0])
        text = buffer[:index].decode("utf-8", "replace")
        self.transcript.append(f"$ {command}\n{text}")
        if status != 0:
            raise AssertionError(f"{block.where}: `{command}` exited {status}:\n{text}{self._background_logs()}")
        return text

    def start_background(self, line: str, block: Block) -> None:
        command = line.split("#", 1)[0].strip()
        cwd = self.shell("pwd", block).strip()
        dump = self.cwd.parent / "session.env"
        self.shell(f"env -0 > {dump}", block)
        env = dict(item.split("=", 1) for item in dump.read_text("utf-8").split("\0") if "=" in item)
        self._terminals += 1
        log = self.cwd.parent / f"terminal-{self._terminals}.log"
        with log.open("wb") as sink:
            # Its own process group, signalled as a whole: ``a && b`` runs b in a child of
            # bash. bash itself waits (the trap) and exits with the command's status.
            process = subprocess.Popen(
                ["bash", "-c", f"trap : TERM\n{command}"],
                cwd=cwd,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        job = Background(command, process, log)
        self.background.append(job)
        deadline = time.monotonic() + self.ready_timeout
        while not READY.search(job.text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{block.where}: `{command}` did not start:\n{job.text()}")
            time.sleep(0.1)
        self.transcript.append(f"[{command}] started\n{job.text()}")
        self._expect_printed(line, job.text(), block)

    def _expect_printed(self, line: str, output: str, block: Block) -> None:
        match = PRINTS.search(line)
        if match and match.group(1) not in output:
            raise AssertionError(f"{block.where}: `{line}` should print {match.group(1)!r}:\n{output}")

    # -- ending ----------------------------------------------------------------
    def stop_background(self, first: int = 0) -> list[str]:
        """Stop the background commands from index ``first`` on (SIGTERM); return the problems seen."""
        problems: list[str] = []
        jobs, self.background = self.background[first:], self.background[:first]
        for job in reversed(jobs):
            if job.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.process.pid, signal.SIGTERM)
            try:
                code = job.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.process.pid, signal.SIGKILL)
                code = job.process.wait()
            text = job.text()
            if code != 0 or "Traceback" in text:
                problems.append(f"`{job.command}` ended with {code}:\n{text[-3000:]}")
        return problems

    def close(self) -> list[str]:
        """Stop everything still running and the shell; return the problems seen."""
        problems = self.stop_background()
        if self._bash.stdin is not None:
            self._bash.stdin.close()
        try:
            self._bash.wait(10)
        except subprocess.TimeoutExpired:
            self._bash.kill()
            self._bash.wait()
        if self._bash.stdout is not None:
            self._bash.stdout.close()
        return problems

    def _background_logs(self) -> str:
        return "".join(f"\n--- {job.command} ---\n{job.text()[-2000:]}" for job in self.background)


def logical_lines(code: str) -> list[str]:
    """Shell lines, with ``\\`` continuations joined and blank/comment-only lines dropped."""
    lines: list[str] = []
    pending = ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines
