"""The distributions the README's ``pip`` commands install, downloaded once per session.

The newcomer walk creates two fresh virtual environments and installs the package
with all its dependencies into each (``pip install -e .``, then the wheel), plus the
build backend for ``pip wheel`` and ``pip install pytest pytest-asyncio``. Pip's cache
does not keep those downloads on this machine, so each command fetched the same wheels
from the index again: about 15 s a time. Instead, one ``pip download`` of everything
those commands need starts in the background as soon as the walk is collected (it
overlaps the tests that run before it), and the walk's pip installs from it
(``PIP_NO_INDEX``, ``PIP_FIND_LINKS``). The README's commands run unchanged; the
resolution against the index happens once, in ``pip download``, from the same
requirements: ``pyproject.toml``'s dependencies and build requirements (with the one
hatchling adds for an editable build), and the names the README's ``pip install`` lines
give. A requirement missing from it fails the walk (pip finds no distribution): it
never passes where installing from the index would fail.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .blocks import read_blocks
from .session import logical_lines

__all__ = ["Wheelhouse", "requirements"]


def requirements(root: Path) -> list[str]:
    """What the README's pip commands install from the index, as pip requirements."""
    project = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    # hatchling's editable builds (``pip install -e .``) add ``editables`` to its build requirements.
    wanted = [*project["build-system"]["requires"], "editables", *project["project"]["dependencies"]]
    for block in read_blocks(root / "README.md"):
        if block.kind != "run" or block.language != "bash":
            continue
        for line in logical_lines(block.code):
            for command in line.split("#", 1)[0].split("&&"):
                words = shlex.split(command)
                if len(words) > 2 and words[0].endswith("pip") and words[1] == "install":
                    # Bare names only: "." and "dist/x.whl" are the package itself, built locally.
                    wanted += [w for w in words[2:] if not w.startswith("-") and "/" not in w and w != "."]
    return wanted


@dataclass
class Wheelhouse:
    """``pip download`` of :func:`requirements` into a temporary folder, running in the background."""

    path: Path
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, root: Path) -> Wheelhouse:
        path = Path(tempfile.mkdtemp(prefix="exprsn-wheelhouse-"))
        log = path.with_name(path.name + ".log")
        command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(path)]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*command, *requirements(root)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=path,
                # pip's resolver is CPU-bound (about 19 s of CPU here): it takes what the tests
                # running meanwhile leave idle, not their share.
                preexec_fn=lambda: os.nice(10),
            )
        return cls(path, process, log)

    def wait(self, timeout: float = 300) -> Path:
        """The folder, once every download is done (raises if ``pip download`` failed)."""
        code = self.process.wait(timeout)
        assert code == 0, f"pip download exited {code}:\n{self.log.read_text('utf-8', 'replace')[-3000:]}"
        return self.path

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.log.unlink()
