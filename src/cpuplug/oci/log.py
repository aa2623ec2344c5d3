"""runc's ``--log`` / ``--log-format``: logrus lines that containerd reads back.

containerd-shim-runc-v2 passes ``--log <bundle>/log.json --log-format json`` and, when
a command fails, reports the ``msg`` of the last ``"level":"error"`` line of that file
("OCI runtime create failed: ..."), so an error must be written there in logrus's JSON
form, with an RFC 3339 ``time`` (Go's decoder refuses anything else, and the message
would be lost). ``text`` is logrus's text form. ``--debug`` adds debug lines.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Level(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class RuncLog:
    """Where runc would log: a file in either format, else stderr in text form."""

    def __init__(
        self, path: Path | None = None, fmt: LogFormat = LogFormat.TEXT, debug: bool = False
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.debug_enabled = debug

    def line(self, level: Level, msg: str) -> str:
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if self.fmt is LogFormat.JSON:
            record = {"level": level.value, "msg": msg, "time": now}
            return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        return f"time={json.dumps(now)} level={level.value} msg={json.dumps(msg)}\n"

    def write(self, level: Level, msg: str) -> None:
        if level is Level.DEBUG and not self.debug_enabled:
            return
        text = self.line(level, msg)
        if self.path is None:
            if level is not Level.ERROR:  # the error itself goes to stderr once, by main
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(text)
            return
        # one write() of one line on an O_APPEND file: concurrent writers do not interleave
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)

    def error(self, msg: str) -> None:
        self.write(Level.ERROR, msg)

    def warning(self, msg: str) -> None:
        self.write(Level.WARNING, msg)

    def info(self, msg: str) -> None:
        self.write(Level.INFO, msg)

    def debug(self, msg: str) -> None:
        self.write(Level.DEBUG, msg)
