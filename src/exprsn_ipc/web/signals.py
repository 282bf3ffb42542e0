"""SIGTERM and SIGINT for a running server: the first asks for a graceful stop, a second forces it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from exprsn_ipc.logsafe import get_logger

__all__ = ["HANDLED_SIGNALS", "ShutdownSignals"]

log = get_logger("exprsn_ipc.web.https")

HANDLED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class ShutdownSignals:
    """Routes SIGTERM/SIGINT to ``on_signal(signum)`` on the running loop, and puts the old handlers back."""

    def __init__(self, owner: str, on_signal: Callable[[int], None]) -> None:
        self.owner = owner
        self._on_signal = on_signal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (``loop.add_signal_handler`` on the running loop).

        Outside the main thread nothing is installed (a warning is logged); on event
        loops without ``add_signal_handler`` a thread-safe ``signal.signal`` handler is used.
        """
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            if sig in self._previous:
                continue
            try:
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, RuntimeError) as exc:
                log.warning("%s: cannot install a %s handler here: %s", self.owner, sig.name, exc)
                continue
            except NotImplementedError:  # Windows event loops
                previous = signal.signal(sig, self._threadsafe_handler(loop))
            self._previous[sig] = previous
        self._loop = loop

    def _threadsafe_handler(self, loop: asyncio.AbstractEventLoop) -> Callable[[int, FrameType | None], None]:
        def handler(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._on_signal, sig)

        return handler

    def remove(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        loop, self._loop = self._loop, None
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                if loop is not None and not loop.is_closed():
                    loop.remove_signal_handler(sig)
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
