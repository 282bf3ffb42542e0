"""Log lines that a client cannot make expensive, long or misleading.

Every logger of the library is made by :func:`get_logger`: its records' arguments
are clipped to :data:`MAX_ARG_CHARS` and their control characters escaped before any
handler sees them, whatever handler the application installs. A hostile client's
100,000-character token id or header thus costs a log line of a few hundred
characters, and cannot start a forged line with a newline. The library still never
configures where records go; :class:`ClipArgs` is also what the CLI puts on its
own handler, for the records of other libraries.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["MAX_ARG_CHARS", "MAX_MESSAGE_CHARS", "ClipArgs", "clip", "get_logger"]

#: Characters of one argument kept in a log line.
MAX_ARG_CHARS: Final = 200
#: Characters of a whole message kept (for records whose text is not in their arguments).
MAX_MESSAGE_CHARS: Final = 4000

_ESCAPES: Final = {i: f"\\x{i:02x}" for i in range(32)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES[0x7F] = "\\x7f"

#: Argument types that are short and safe as they are.
_PLAIN: Final = (int, float, bool, type(None))


def clip(value: object, limit: int = MAX_ARG_CHARS) -> str:
    """``str(value)`` escaped and cut to ``limit`` characters, saying how much was left out.

    Only the kept part is converted and escaped, so the cost is bounded by
    ``limit`` for strings and bytes, whatever their length.
    """
    if isinstance(value, bytes | bytearray):
        head = bytes(value[: limit + 1]).decode("utf-8", "replace")
        total = len(value)
    else:
        text = value if isinstance(value, str) else str(value)
        head, total = text[: limit + 1], len(text)
    head = head.translate(_ESCAPES)
    if total <= limit and len(head) <= limit:
        return head
    return f"{head[:limit]}…(+{total - limit} chars)"


class ClipArgs(logging.Filter):
    """Clip every argument of a record (and a message that carries no arguments)."""

    def __init__(self, limit: int = MAX_ARG_CHARS, message_limit: int = MAX_MESSAGE_CHARS) -> None:
        super().__init__()
        self.limit = limit
        self.message_limit = message_limit

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(arg if isinstance(arg, _PLAIN) else clip(arg, self.limit) for arg in args)
        elif isinstance(args, dict) and args:
            record.args = {k: v if isinstance(v, _PLAIN) else clip(v, self.limit) for k, v in args.items()}
        elif isinstance(record.msg, str) and len(record.msg) > self.message_limit:
            record.msg = clip(record.msg, self.message_limit)
        return True


_CLIP: Final = ClipArgs()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name``, with its records' arguments clipped (see the module's docstring)."""
    logger = logging.getLogger(name)
    if _CLIP not in logger.filters:
        logger.addFilter(_CLIP)
    return logger
