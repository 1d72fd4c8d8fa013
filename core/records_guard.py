"""What a Guard keeps beside its levels: the credentials L1 protects, what the agent used (tool and
model calls, for policies and evidence), and the evidence snapshot of what it was doing.

``GuardRecords`` is a part of ``m99.guard.Guard`` (a mixin with no state of its own: the attributes it
reads are the Guard's, declared there in ``__slots__``)."""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

from . import network
from .credentials import _MISSING, CredentialSet
from .effects import EffectLedger

__all__ = ["TASK_LIMIT", "GuardRecords"]

TASK_LIMIT = 2000  # characters of the current task kept for evidence
_FOLD_AT = 256  # noted calls kept before they are folded into the usage counters
_now = time.time


class GuardRecords:
    __slots__ = ()

    # The Guard's attributes these methods use (see ``Guard.__init__``).
    name: str
    kind: str
    host: str
    frameworks: tuple[str, ...]
    started_at: float
    effects: EffectLedger
    _lock: threading.RLock
    _creds: CredentialSet
    _failures: list[str]
    _read_only: frozenset[str]
    _redact_gate: bool
    _task: str | None
    _noted: collections.deque[tuple[str | None, float, bool, int, float]]
    _usage: dict[str, Any]
    _usage_lock: threading.Lock
    _recent: collections.deque[tuple[str | None, float, bool, int, float]]  # noted tool calls, as noted
    _policy: Any
    _level: int
    _reason: str
    _version: int
    _tool_gate: bool
    _msg_gate: bool
    _lease_lost: bool
    _lease_reason: str
    _fail_open: bool

    # -- L1 credentials -------------------------------------------------------------------------------

    def protect_env(self, name: str, *, label: str = "") -> None:
        """At L1+ the variable leaves ``os.environ`` (kept in memory) and comes back exactly on restore."""
        with self._lock:
            self._creds.add_env(name, label)

    def protect_secret(self, value: str | bytes, *, label: str = "secret") -> None:
        """At L1+ ``value`` is redacted wherever ``redact`` is applied (tool inputs and outputs)."""
        with self._lock:
            self._creds.add_secret(value, label)

    def protect_attribute(self, obj: object, name: str, *, label: str = "", revoked: Any = _MISSING) -> None:
        """At L1+ ``obj.name`` is replaced by a value that fails locally; restore puts the original back.

        Strings become an empty ``RevokedCredential`` (the openai SDK then refuses before sending),
        callables a function raising ``M99KillSwitchTriggered``; pass ``revoked`` to choose yourself.
        """
        with self._lock:
            self._creds.add_attribute(obj, name, label, revoked)

    def protect_item(
        self, mapping: MutableMapping[Any, Any], key: Any, *, label: str = "", revoked: Any = _MISSING
    ) -> None:
        """``protect_attribute`` for a mapping entry, e.g. AutoGen's ``_raw_config["api_key"]``."""
        with self._lock:
            self._creds.add_item(mapping, key, label, revoked)

    def credential_fingerprints(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._creds.fingerprints()

    def redact_always(self, value: Any) -> Any:
        """``value`` with protected secrets redacted at any level (what leaves the process as evidence)."""
        return self._creds.redact(value)

    def enforcement_failures(self) -> list[str]:
        return self._failures + self._creds.failures()

    def redact(self, value: Any) -> Any:
        """At L1+ ``value`` with protected secrets replaced by ``[REDACTED:m99]``; below, ``value`` itself."""
        if not self._redact_gate:
            return value
        return self._creds.redact(value)

    # -- usage and evidence ---------------------------------------------------------------------------

    def record_tool_call(self, tool: str, *, ok: bool = True, handle: int | None = None, result: Any = None) -> None:
        """A tool call ended (``ok`` False: with an error; ``handle`` from ``effects.started``).  Cheap:
        it runs after every tool call."""
        now = _now()
        self.effects.finished(handle, tool, ok=ok, result=result, ended=now)
        noted = self._noted
        noted.append((tool, now, ok, 0, 0.0))
        if len(noted) > _FOLD_AT:
            self._fold()
        policy = self._policy
        if policy is not None:
            policy.record_tool(tool, ok)

    def record_model_call(
        self, *, tokens: int = 0, cost_usd: float = 0.0, ok: bool = True, model: str | None = None
    ) -> None:
        noted = self._noted
        noted.append((None, _now(), ok, int(tokens), float(cost_usd)))
        if len(noted) > _FOLD_AT:
            self._fold()
        if self._policy is not None:
            self._policy.settle(tokens, cost_usd, ok, model)

    def _fold(self) -> None:
        """Move the noted calls into the counters, in the order they were noted."""
        noted = self._noted
        with self._usage_lock:
            usage, recent = self._usage, self._recent
            tools = tool_errors = models = model_errors = tokens = 0
            cost = 0.0
            failures = usage["consecutive_failures"]
            while noted:
                entry = noted.popleft()  # atomic: appends from other threads go on
                tool, _, ok, used, spent = entry
                if tool is None:
                    models += 1
                    tokens += used
                    cost += spent
                    model_errors += not ok
                else:
                    tools += 1
                    tool_errors += not ok
                    recent.append(entry)  # as noted: no tuple of its own
                failures = 0 if ok else failures + 1
            usage["tool_calls"] += tools
            usage["tool_errors"] += tool_errors
            usage["model_calls"] += models
            usage["model_errors"] += model_errors
            usage["tokens"] += tokens
            usage["cost_usd"] += cost
            usage["consecutive_failures"] = failures

    @property
    def usage(self) -> dict[str, Any]:
        self._fold()
        with self._usage_lock:
            usage = dict(self._usage)
        usage["errors"] = usage["tool_errors"] + usage["model_errors"]
        usage["runtime_seconds"] = round(time.time() - self.started_at, 3)
        return usage

    def snapshot(self) -> dict[str, Any]:
        """Evidence of what this agent was doing; every protected secret is redacted, at any level."""
        self._fold()
        with self._usage_lock:
            recent = [{"tool": t, "ts": ts, "ok": ok} for t, ts, ok, _, _ in self._recent]
        with self._lock:
            data: dict[str, Any] = {
                "agent": self.name,
                "kind": self.kind,
                "frameworks": list(self.frameworks),
                "pid": os.getpid(),
                "host": self.host,
                "python": sys.version.split()[0],
                "level": self._level,
                "reason": self._reason,
                "version": self._version,
                "frozen": self._tool_gate,
                "allows_messages": not self._msg_gate,
                "lease": {
                    "lost": self._lease_lost,
                    "reason": self._lease_reason,
                    "fail_open": self._fail_open,
                },
                "read_only_tools": sorted(self._read_only),
                "usage": self.usage,
                "recent_tool_calls": recent,
                "task": self._task,
                "credentials": self._creds.fingerprints(),
                "enforcement_failures": self._failures + self._creds.failures(),
                "network": network.state(),
                "taken_at": time.time(),
            }
            # Unconditional: the snapshot leaves the process, so redact even at level 0.
            redacted: dict[str, Any] = self._creds.redact(data)
        return redacted
