"""Records at ERROR or above from any logger: where an unhandled exception in a task or a
protocol ends up. The fuzz tests fail on any record they did not expect."""

from __future__ import annotations

import logging
import traceback

__all__ = ["ErrorLog"]


class ErrorLog(logging.Handler):
    """Every record at ERROR or above (installed on the root logger by the ``error_log`` fixture)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def describe(self, records: list[logging.LogRecord] | None = None) -> str:
        lines = []
        for record in self.records if records is None else records:
            lines.append(f"{record.name}: {record.getMessage()}")
            if record.exc_info and record.exc_info[1] is not None:
                lines.extend(traceback.format_exception(record.exc_info[1]))
        return "\n".join(lines)

    def take(self) -> list[logging.LogRecord]:
        records, self.records = self.records, []
        return records

    def __str__(self) -> str:
        return self.describe()
