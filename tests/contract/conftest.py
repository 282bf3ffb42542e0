from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .bindings import BINDINGS, Harness


@pytest.fixture(params=sorted(BINDINGS))
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with BINDINGS[request.param](request) as h:
        yield h
