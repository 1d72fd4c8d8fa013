"""What an agent did, and what its Guard checks it holds: the side-effect ledger, the evidence taken
before a kill, and the receipt an acknowledgement carries.

- ``EffectLedger``: the tool calls that completed in the last minutes (name, arguments, start, end,
  result size, ok) and the calls in flight, bounded in count and age.  Arguments are kept as the
  adapters gave them and redacted (fingerprints of protected secrets only) when they leave the process.
- ``capture``: what the Guard copies, cheaply, the moment a kill reaches it, before any level is
  applied; ``evidence`` turns a capture into the document the agent signs and uploads off the hot path.
- ``receipt``: positive checks after a change was applied: the level held, a tool asked of the gate
  and refused, an outbound connection asked of the network gate and refused, credentials revoked
  (count and fingerprints), the terminator running.
"""

from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["PROBE_TOOL", "Capture", "EffectLedger", "capture", "evidence", "receipt"]

PROBE_TOOL = "m99-receipt-probe"  # the tool name a receipt asks the gate about (never a real tool)
KEEP_SECONDS = 600.0  # completed calls older than this leave the ledger
MAX_COMPLETED = 256
MAX_IN_FLIGHT = 256
MAX_ARGUMENT_CHARS = 2000  # per call, after redaction
MAX_FINGERPRINTS = 16  # in a receipt
_SIZED = (str, bytes, bytearray, list, tuple, dict, set)  # a tuple: ``isinstance`` reads it faster than a union


def _size(value: Any) -> int | None:
    """The size of a tool's result: characters of text, bytes of bytes, items of a collection."""
    if value is None:
        return None
    if isinstance(value, _SIZED):
        return len(value)
    try:
        return len(str(value))
    except Exception:
        return None


class EffectLedger:
    """Bounded record of an agent's tool calls: ``started`` when a call begins (returns a handle),
    ``finished`` when it ends.  Both are observation: they never raise into the host."""

    __slots__ = ("_completed", "_ids", "_in_flight")

    def __init__(self) -> None:
        # (tool, arguments, started, ended, result size, ok)
        self._completed: collections.deque[tuple[str, Any, float | None, float, int | None, bool]] = collections.deque(
            maxlen=MAX_COMPLETED
        )
        self._in_flight: dict[int, tuple[str, Any, float]] = {}
        self._ids = itertools.count(1)

    def started(self, tool: str, arguments: Any = None) -> int:
        # On every admitted tool call: no lock.  ``next`` of a count, a dict store and a dict pop are
        # each one step under the interpreter lock; ``entries`` copies in one step too.
        handle = next(self._ids)
        flying = self._in_flight
        if len(flying) >= MAX_IN_FLIGHT:  # a call that never ended: the oldest goes
            flying.pop(next(iter(flying), 0), None)
        flying[handle] = (tool if type(tool) is str else str(tool), arguments, time.time())
        return handle

    def finished(
        self, handle: int | None, tool: str, *, ok: bool = True, result: Any = None, ended: float | None = None
    ) -> None:
        """A call ended (at ``ended``, else now); ``handle`` from ``started`` (None: a call whose start
        was not seen)."""
        begun = self._in_flight.pop(handle, None) if handle is not None else None
        self._completed.append(
            (
                tool if type(tool) is str else str(tool),
                begun[1] if begun else None,
                begun[2] if begun else None,
                time.time() if ended is None else ended,
                None if result is None else _size(result),
                ok if ok is True or ok is False else bool(ok),
            )
        )

    def entries(self, now: float | None = None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(completed in the last ``KEEP_SECONDS``, in flight): raw copies, cheap."""
        cutoff = (time.time() if now is None else now) - KEEP_SECONDS
        completed = [e for e in list(self._completed) if e[3] >= cutoff]
        return completed, list(self._in_flight.values())


@dataclass(slots=True)
class Capture:
    """What a Guard copied the moment a kill reached it, before applying it."""

    taken_at: float
    level_before: int
    level_after: int
    version: int
    reason: str
    completed: list[tuple[Any, ...]]
    in_flight: list[tuple[Any, ...]]


def capture(guard: Guard, level: int, version: int, reason: str) -> Capture:
    completed, flying = guard.effects.entries()
    return Capture(time.time(), guard.level, level, version, reason, completed, flying)


def _arguments(guard: Guard, value: Any) -> Any:
    if value is None:
        return None
    text = guard.redact_always(value)
    if not isinstance(text, str):
        try:
            text = repr(text)
        except Exception:
            text = f"<{type(value).__name__}>"
        text = guard.redact_always(text)
    return text if len(text) <= MAX_ARGUMENT_CHARS else text[:MAX_ARGUMENT_CHARS] + "…"


def _keyed(key: bytes, prints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Credential fingerprints keyed with the agent's own derived key: a reader of the evidence can
    count and match them, never confirm a guessed secret."""
    from .crypto import keyed_fingerprint

    return [{**p, "fingerprint": keyed_fingerprint(key, str(p.get("fingerprint", "")))} for p in prints]


def evidence(guard: Guard, taken: Capture, *, execution_ids: list[str], fingerprint_key: bytes) -> dict[str, Any]:
    """The agent's evidence document for the executions ``execution_ids``: the Guard's snapshot (every
    protected secret redacted, credential fingerprints keyed) and the side-effect ledger as it was when
    the kill arrived."""
    snapshot = guard.snapshot()
    snapshot["credentials"] = _keyed(fingerprint_key, snapshot.get("credentials") or [])
    completed = [
        {
            "tool": guard.redact_always(tool),
            "arguments": _arguments(guard, arguments),
            "started_at": started,
            "ended_at": ended,
            "result_size": size,
            "ok": ok,
        }
        for tool, arguments, started, ended, size, ok in taken.completed
    ]
    in_flight = [
        {"tool": guard.redact_always(tool), "arguments": _arguments(guard, arguments), "started_at": started}
        for tool, arguments, started in taken.in_flight
    ]
    return {
        "type": "agent.evidence",
        "execution_ids": execution_ids,
        "agent": guard.name,
        "captured_at": taken.taken_at,
        "level_before": taken.level_before,
        "level": taken.level_after,
        "version": taken.version,
        "reason": taken.reason,
        "side_effects": {"window_seconds": KEEP_SECONDS, "completed": completed, "in_flight": in_flight},
        "snapshot": snapshot,
    }


def receipt(guard: Guard, fingerprint_key: bytes) -> dict[str, Any]:
    """Positive checks of what ``guard`` enforces now, for the acknowledgement it sends (credential
    fingerprints keyed with ``fingerprint_key``, the agent's own)."""
    from . import network
    from .errors import M99KillSwitchTriggered

    level = guard.level
    out: dict[str, Any] = {"level": level, "checked_at": time.time()}
    if level >= 3 or guard.frozen:
        try:
            guard.check_tool(PROBE_TOOL)
            out["tools_refused"] = False
        except M99KillSwitchTriggered:
            out["tools_refused"] = True
    if level >= 2:
        out["connections_refused"] = network.refuses_for(guard)
        out["connections_open"] = network.open_connections(guard)
        out["messages_withheld"] = not guard.allows_messages
    if level >= 1:
        prints = _keyed(fingerprint_key, guard.credential_fingerprints())
        revoked = [p for p in prints if p.get("revoked")]
        out["credentials_protected"] = len(prints)
        out["credentials_revoked"] = len(revoked)
        out["credential_fingerprints"] = [str(p.get("fingerprint", "")) for p in revoked][:MAX_FINGERPRINTS]
    if level >= 5:
        out["process_exit"] = "terminating" if guard.terminating else "not terminating"
        out["grace_seconds"] = guard.grace_seconds
    failures = guard.enforcement_failures()
    if failures:
        out["failures"] = [f[:300] for f in failures[:8]]
    return out
