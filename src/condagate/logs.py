"""Structured logging: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from condagate.security.redact import redact


def log_time(created: float) -> str:
    """A line's "time": ``time.time()`` as ISO 8601, UTC, in milliseconds."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def json_line(created: float, level: str, logger: str, message: str, fields: dict[str, object] | None) -> str:
    """One log line: the JSON object every handler of condagate writes, redacted."""
    entry: dict[str, object] = {
        "time": log_time(created),
        "level": level,
        "logger": logger,
        "message": message,
    }
    if fields:
        entry.update(fields)
    # Every line passes the one redaction: keys in paths, URLs with credentials, header values.
    return redact(json.dumps(entry))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict):
            fields = None
        if record.exc_info:
            fields = {**(fields or {}), "exception": self.formatException(record.exc_info)}
        return json_line(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def granian_log_config() -> dict[str, object]:
    """The server's own loggers (start-up, worker lifecycle, unhandled exceptions) as JSON lines on stderr too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "condagate.logs.JsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "_granian": {"handlers": ["json"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["json"], "level": "INFO", "propagate": False},
        },
    }
