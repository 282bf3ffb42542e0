"""The wheelhouse of the README newcomer walk (see :mod:`tests.docs.wheelhouse`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .wheelhouse import Wheelhouse

ROOT = Path(__file__).resolve().parents[2]
#: The one wheelhouse of the session, started at collection when the walk will run.
_started: list[Wheelhouse] = []


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect have removed what will not run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not _started and any(item.name == "test_readme_newcomer_walk" for item in items):
        _started.append(Wheelhouse.start(ROOT))


def pytest_unconfigure() -> None:
    while _started:
        _started.pop().close()


@pytest.fixture(scope="session")
def wheelhouse() -> Iterator[Path]:
    """A folder with every distribution the README's pip commands install."""
    if not _started:
        _started.append(Wheelhouse.start(ROOT))
    yield _started[0].wait()
