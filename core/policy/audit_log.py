"""AUDIT: the JSONL log of a KILLSWITCH.md policy, one line per escalation event or refusal, each with
exactly the configured ``log_fields`` (null where M99 has no value), appended and never rewritten.

Observation: a write that fails is logged and counted, never raised into the agent.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]

logger = logging.getLogger("m99.policy")

_MAX_TEXT = 2000  # characters of one value kept in a line


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + "…"
    if isinstance(value, int | float | bool) or value is None or isinstance(value, str):
        return value
    return str(value)[:_MAX_TEXT]


class AuditLog:
    def __init__(self, path: str | Path, fields: Iterable[str]) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)
        self.failures = 0
        self._lock = threading.Lock()

    def line(self, record: Mapping[str, Any]) -> str:
        """The JSON line for ``record``: the configured fields, in order, and nothing else."""
        out: dict[str, Any] = {}
        for name in self.fields:
            value = record.get(name)
            if name == "timestamp" and isinstance(value, int | float):
                value = datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat(timespec="milliseconds")
            out[name] = _clean(value)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n"

    def write(self, record: Mapping[str, Any]) -> bool:
        """Append one line; False (and logged) when it could not be written."""
        try:
            data = self.line(record).encode("utf-8")
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, flags, 0o600)
                try:
                    os.write(fd, data)  # one write of one line: O_APPEND keeps lines whole
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return True
        except Exception as exc:  # observation never crashes the host
            self.failures += 1
            logger.error("m99: cannot append to the policy audit log %s: %s", self.path, exc)
            return False
