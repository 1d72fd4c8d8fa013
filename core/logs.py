"""The log lines of ``m99 serve``: ``text`` for a terminal, ``json`` (one object a line) for a collector.

A JSON line is ``{"time", "level", "logger", "message", "fields"?, "exception"?}``; ``fields`` holds the
structured data a line was logged with (``extra={"m99": {...}}``): every execution, dead man's switch
firing and policy escalation carries its ids, origin, level, scope and counts there.  Whatever the
format, anything shaped like a bearer token is masked before a line is written: tokens never reach a log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

__all__ = ["FORMATS", "JsonFormatter", "Redact", "TextFormatter", "announce", "configure", "redact"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# M99 tokens (``m99_`` + 43 URL-safe characters) and whatever follows ``Bearer``.
_SECRET = re.compile(r"\bm99_[A-Za-z0-9_-]{20,}|(?<=Bearer )[^\s\"',;]+", re.IGNORECASE)
MASK = "[redacted]"


def redact(value: Any) -> Any:
    """``value`` with every token-shaped string masked (strings, and inside lists and dicts)."""
    if isinstance(value, str):
        return _SECRET.sub(MASK, value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


class Redact(logging.Filter):
    """Mask token-shaped strings in a record's message, arguments and fields, whatever formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = redact(record.getMessage())
            record.args = None
        except Exception:  # a message that does not format: keep its text, masked
            record.msg, record.args = redact(str(record.msg)), None
        fields = getattr(record, "m99", None)
        if isinstance(fields, dict):
            record.m99 = redact(fields)
        return True


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line; the text of agent-supplied values is escaped by the encoder."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "m99", None)
        if isinstance(fields, dict) and fields:
            out["fields"] = fields
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatException(self, ei: Any) -> str:
        return str(redact(super().formatException(ei)))


def configure(level: str = "warning", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's lines (M99's, uvicorn's, the libraries') to ``stream`` in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(Redact())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    return handler


def announce(text: str, fields: dict[str, Any], fmt: str = "text", stream: IO[str] | None = None) -> None:
    """A line the operator must see whatever the log level (where the server listens, its key): the text
    as is, or in ``json`` the same object a log line is, at level ``info``."""
    out = stream or sys.stdout
    if fmt == "json":
        record = logging.LogRecord("m99.server", logging.INFO, __file__, 0, text, None, None)
        record.m99 = fields
        Redact().filter(record)
        out.write(JsonFormatter().format(record) + "\n")
    else:
        out.write(str(redact(text)) + "\n")
    out.flush()
