"""Bounded work for unauthenticated callers: per-source rate limits, and refusals audited without
letting a flood of them write the audit chain at the flood's rate.

A refusal (a bad signature, a replayed sequence, a name bound to another key, a bad token) is an
authority-misuse signal worth recording, but a caller can produce thousands a second.  ``Refusals``
records the first of a kind from a source at once and folds the rest of its window into one entry
with a count, written when the window closes.  Nothing here touches the store on the caller's
thread: entries are written by ``flush`` on the control plane's background thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimiter", "Refusals"]

MAX_SOURCES = 10_000  # tracked keys; beyond, the oldest are forgotten (their counts folded first)


class RateLimiter:
    """Token buckets per source: ``rate`` per second sustained, ``burst`` at once; rate 0 = unlimited."""

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, source: str) -> float:
        """0 if the source may act now (and it is counted), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(source, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[source] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[source] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            while len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        return wait


class Refusals:
    """Refusals noted on any thread, written to the audit chain by ``flush`` (first at once, the rest
    of each ``window`` seconds folded into one entry with ``repeated``)."""

    def __init__(self, write: Callable[[list[tuple[str, dict[str, Any], dict[str, Any]]]], None], window: float = 10.0):
        self._write = write
        self.window = window
        self._lock = threading.Lock()
        # key -> [kind, actor, data, window start, folded count]
        self._open: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        self._due: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.total = 0

    def note(self, kind: str, actor: dict[str, Any], data: dict[str, Any], source: str) -> None:
        now = time.monotonic()
        key = (kind, source)
        with self._lock:
            self.total += 1
            entry = self._open.get(key)
            if entry is not None and now - entry[3] < self.window:
                entry[4] += 1
                entry[2] = data  # the latest, as an example
                return
            if entry is not None:
                self._close(key, entry)
            self._open[key] = [kind, actor, data, now, 0]
            self._due.append((kind, actor, {**data, "source": source}))
            while len(self._open) > MAX_SOURCES:
                old_key, old = self._open.popitem(last=False)
                self._close(old_key, old, pop=False)

    def _close(self, key: tuple[str, str], entry: list[Any], pop: bool = True) -> None:
        kind, actor, data, _, count = entry
        if count:
            self._due.append(
                (kind, actor, {**data, "source": key[1], "repeated": count, "window_seconds": self.window})
            )
        if pop:
            self._open.pop(key, None)

    def flush(self) -> int:
        """Write what is due (first refusals, folded counts of closed windows); the number of entries."""
        now = time.monotonic()
        with self._lock:
            for key, entry in list(self._open.items()):
                if now - entry[3] >= self.window:
                    self._close(key, entry)
            due, self._due = self._due, []
        if due:
            try:
                self._write(due)
            except Exception:
                with self._lock:  # keep them for the next flush: nothing noted is lost
                    self._due[:0] = due
                raise
        return len(due)
