"""Log output: human lines on a terminal, priority-prefixed lines under journald, or JSON.

Under journald (stderr is the stream named by $JOURNAL_STREAM) lines carry no timestamp (the
journal adds one) and start with an sd-daemon `<N>` priority, so `journalctl -p` filters work.
"""

from __future__ import annotations

import json
import logging
import os
import sys

#: syslog priorities for the standard levels (sd-daemon(3)).
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journald(journal_stream: str | None, stream_fd: int) -> bool:
    device, _, inode = (journal_stream or "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        stat = os.fstat(stream_fd)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


class Formatter(logging.Formatter):
    def __init__(self, json_lines: bool, journald: bool) -> None:
        super().__init__()
        self._json = json_lines
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self._json:
            fields = {"level": record.levelname.lower(), "logger": record.name, "message": message}
            if not self._journald:
                fields = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), **fields}
            line = json.dumps(fields, ensure_ascii=False)
        elif self._journald:
            line = f"{record.name}: {message}"
        else:
            line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if self._journald:
            priority = PRIORITY.get(record.levelno, 6)
            line = "\n".join(f"<{priority}>{part}" for part in line.splitlines())
        return line


def configure_logging(level: str, log_format: str, journal_stream: str | None) -> None:
    """`journal_stream` is $JOURNAL_STREAM, which systemd sets when stderr goes to the journal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter(log_format == "json", under_journald(journal_stream, sys.stderr.fileno())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
