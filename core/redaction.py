"""Which Guards of this process redact now (L1+): one dict test for a framework hook, and watchers an
adapter uses to put a redaction seam into a framework only while some Guard needs it."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["any_redacting", "set_redacting", "unwatch_redacting", "watch_redacting"]

logger = logging.getLogger("m99.guard")

# The Guards redacting now (L1+), by id, each with a weak reference that drops its entry when the
# Guard is collected.  Only ``Guard._update_gates`` writes it, under ``_redacting_lock``.
_redacting: dict[int, weakref.ref[Guard]] = {}
_redacting_lock = threading.Lock()
_redacting_watchers: list[Callable[[], None]] = []


def any_redacting() -> bool:
    """Whether any Guard of this process redacts now (L1+).  One test of a dict, for a framework hook
    that would otherwise find its Guards on every call only to learn that nothing needs redacting."""
    return bool(_redacting)


def watch_redacting(callback: Callable[[], None]) -> None:
    """Call ``callback()`` whenever the process goes from no Guard redacting to some, or back; it reads
    ``any_redacting()`` itself (calls from two threads may arrive in either order).  It runs on the
    thread applying the change, before that change is acknowledged, so it must be quick and must not
    wait on a Guard; an adapter uses it to put a redaction seam into a framework only while needed."""
    with _redacting_lock:
        if callback not in _redacting_watchers:
            _redacting_watchers.append(callback)


def unwatch_redacting(callback: Callable[[], None]) -> None:
    with _redacting_lock:
        if callback in _redacting_watchers:
            _redacting_watchers.remove(callback)


def set_redacting(guard: Guard, on: bool) -> None:
    key = id(guard)
    with _redacting_lock:
        was = bool(_redacting)
        if not on:
            _redacting.pop(key, None)
        elif key not in _redacting:
            _redacting[key] = weakref.ref(guard, _forget_redacting(key))
        watchers = tuple(_redacting_watchers) if bool(_redacting) != was else ()
    for watcher in watchers:
        try:
            watcher()
        except Exception:  # a watcher never stops enforcement
            logger.exception("m99: redaction watcher %r failed", watcher)


def _forget_redacting(key: int) -> Callable[[weakref.ref[Guard]], None]:
    # Called by the garbage collector, at any point of any thread: no lock (the watchers are told at
    # the next change; meanwhile a seam left in place only costs its pass-through).
    def forget(ref: weakref.ref[Guard]) -> None:
        if _redacting.get(key) is ref:  # not a newer Guard that took the same id
            _redacting.pop(key, None)

    return forget
