"""logsafe: clipped, escaped log arguments, whatever handler the application installs."""

from __future__ import annotations

import io
import logging

from exprsn_ipc.logsafe import MAX_ARG_CHARS, ClipArgs, clip, get_logger


def test_clip_keeps_short_text_and_cuts_long_text_saying_how_much() -> None:
    assert clip("exprsn-auth") == "exprsn-auth"
    long = clip("x" * 1_000_000)
    assert long == "x" * MAX_ARG_CHARS + f"…(+{1_000_000 - MAX_ARG_CHARS} chars)"
    assert clip(b"\xff" * 10) == "\ufffd" * 10
    assert clip(ValueError("y" * 500), 10) == "y" * 10 + "…(+490 chars)"


def test_clip_escapes_control_characters_so_a_client_cannot_forge_lines() -> None:
    assert clip("ok\nWARNING forged\r\x1b[31m") == "ok\\nWARNING forged\\r\\x1b[31m"


def test_a_library_logger_clips_its_arguments_for_any_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # the application's own handler: nothing of ours on it
    logger = get_logger("exprsn_ipc.test-logsafe")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("refused %s from %s (%d)", "a" * 100_000, b"b" * 100_000, 7)
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert len(line) < 2 * MAX_ARG_CHARS + 100
    assert line.endswith("(7)\n")


def test_the_filter_clips_other_libraries_messages_too() -> None:
    record = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "bad header " + "h" * 50_000, None, None)
    assert ClipArgs().filter(record)
    assert len(record.getMessage()) < 4_100
    mapping = logging.LogRecord("x", logging.INFO, __file__, 1, "%(who)s", ({"who": "w" * 5000},), None)
    ClipArgs().filter(mapping)
    assert len(mapping.getMessage()) < 300
