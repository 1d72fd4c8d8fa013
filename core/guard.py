"""The Guard: one agent's enforcement state, held in memory and answered without I/O or locks.

The control-plane link, the lease watchdog and tests drive it with ``apply_state`` / ``set_lease_lost``;
adapters ask it ``check_tool`` / ``check_model`` / ``check_status`` on every action.

What each level does here (cumulative: rising to N applies L1..LN in order, falling undoes them in reverse):

- L1  protected env vars removed from ``os.environ`` (kept in memory), protected attributes and mapping
      items replaced by values that fail locally, protected secrets redacted by ``redact``.
- L2  outbound sockets refused in-process and this agent's established connections shut down
      (``m99.network``; the control plane stays allowed); ``allows_messages`` is False.
- L3  ``check_tool``, ``check_model`` and ``check_status`` raise, ``may_offer`` offers no tool (no new
      tool is registered); the process stays alive.
- L4  read-only lockdown: tools in ``read_only_tools`` run, every other tool is refused.  Deliberately,
      ``check_model`` and ``check_status`` do *not* raise at L4, so the agent can go on observing and
      reasoning.  L1/L2 still hold, so in practice only local models or allow-listed endpoints answer.
- L5/L6  every check raises, ``on_change`` callbacks run (evidence), then the terminator: SIGTERM,
      ``grace_seconds``, SIGKILL.  From L5 on the Guard never lowers its level again.

A lost lease freezes like L3 (tools, models and ``check_status`` refused, messages withheld) without
touching credentials or the network, unless ``fail_open``; restoring the lease returns to the level.

What the Guard records beside its levels (L1's credentials, usage, the evidence snapshot) lives in
``m99.records_guard``; the redaction registry in ``m99.redaction``; the terminator in
``m99.termination``.  The level machine itself stays whole here, a little over 500 lines: the gates the
per-call checks read are all written by ``apply_state`` / the lease methods under one lock, and that
invariant is easier to keep in one file than across several.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from . import network
from .credentials import CredentialSet
from .effects import Capture, EffectLedger, capture
from .errors import ConfigError, LeaseExpired, M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused
from .levels import Level
from .network import ConnectionRefusedByM99
from .protocol import DEFAULT_FRAMEWORK, NAME_RULE, clean_frameworks, valid_name
from .records_guard import TASK_LIMIT, GuardRecords
from .redaction import any_redacting, set_redacting, unwatch_redacting, watch_redacting
from .termination import terminate_process

__all__ = [
    "ChangeCallback",
    "ConnectionRefusedByM99",
    "Guard",
    "any_redacting",
    "current_guard",
    "terminate_process",
    "unwatch_redacting",
    "watch_redacting",
]

logger = logging.getLogger("m99.guard")

ChangeCallback = Callable[["Guard", int, int], object]

_now = time.time

# The Guard governing the running context: adapters read it, and so does the L2 network hook.
current_guard: ContextVar[Guard | None] = ContextVar("m99_current_guard", default=None)


def _explained(why: str, reason: str) -> str:
    """What a refusal says: who stopped the agent and why when the control plane said so (``stopped by
    ops@example.com: "Runaway loop" (L3, execution exe_…)``), else the level or the lease."""
    if reason.startswith("stopped by"):
        return f"{why}: {reason}" if why.startswith("L4") else reason
    return why + (f" ({reason})" if reason else "")


def log_change(agent: str, old: int, new: int, reason: str) -> None:
    logger.warning("m99: agent %s L%d -> L%d%s", agent, old, new, f" ({reason})" if reason else "")


class Guard(GuardRecords):
    """The in-process kill switch of one agent (see the module docstring for the level semantics)."""

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_clear_tool",
        "_creds",
        "_fail_open",
        "_failures",
        "_framework_watchers",
        "_halt_gate",
        "_lease_lost",
        "_lease_reason",
        "_level",
        "_lock",
        "_msg_gate",
        "_noted",
        "_policy",
        "_read_only",
        "_reason",
        "_recent",
        "_redact_gate",
        "_task",
        "_terminate",
        "_terminating",
        "_tool_gate",
        "_usage",
        "_usage_lock",
        "_version",
        "applied_at",
        "captured",
        "effects",
        "frameworks",
        "grace_seconds",
        "host",
        "kind",
        "name",
        "pid",
        "quiet",
        "started_at",
        "whole_process",
    )

    def __init__(
        self,
        name: str,
        *,
        kind: str = "agent",
        framework: str | Iterable[str] | None = None,
        read_only_tools: Iterable[str] = (),
        fail_open: bool = False,
        terminate: Callable[[float], None] | None = None,
        grace_seconds: float = 5.0,
        recent_tool_calls: int = 64,
        whole_process: bool = False,
    ) -> None:
        if not valid_name(name):
            raise ConfigError(f"bad agent name {name!r}: {NAME_RULE}")
        if isinstance(read_only_tools, str):
            raise ConfigError("read_only_tools must be a collection of tool names, not one string")
        if grace_seconds < 0:
            raise ConfigError("grace_seconds must be >= 0")
        if not valid_name(kind):
            raise ConfigError(f"bad agent kind {kind!r}: {NAME_RULE}")
        self.name = name
        self.kind = kind
        try:
            # The frameworks this agent runs under, matched by ``framework:NAME`` scopes; an adapter adds
            # its own when it installs into one (``add_framework``).
            self.frameworks = clean_frameworks([framework] if isinstance(framework, str) else framework)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._framework_watchers: list[Callable[[Guard], object]] = []
        # The process's own Guard (``m99.init``'s): at L2 it cuts every connection of the process, the
        # framework agents' Guards' contexts included.
        self.whole_process = bool(whole_process)
        self._fail_open = bool(fail_open)
        self.grace_seconds = float(grace_seconds)
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started_at = time.time()
        self._read_only: frozenset[str] = frozenset(read_only_tools)
        self._terminate = terminate
        self._lock = threading.RLock()
        self._callbacks: list[ChangeCallback] = []
        self._creds = CredentialSet()
        self._failures: list[str] = []
        self._level = 0
        self._reason = ""
        self._version = 0
        self._lease_lost = False
        self._lease_reason = ""
        self._terminating = False
        self._task: str | None = None
        self._policy: Any = None  # a KILLSWITCH.md gate (m99.policy.gate.PolicyGate), asked while its gates are set
        # Precomputed answers for the hot path; only ``_update_gates`` writes them.
        self._tool_gate = False
        self._clear_tool: Callable[[Any], bool] | None = None  # the policy's quick yes, when it is the only rule
        self._halt_gate = False
        self._msg_gate = False
        self._redact_gate = False
        # True while no gate is set (level 0, lease held): adapters then have nothing to check or
        # redact and skip the per-gate questions.  One attribute read, not a property call.
        self.quiet = True
        # Wall clock of the last applied level change: from then on it was enforced (time-to-halt).
        self.applied_at = 0.0
        self._usage_lock = threading.Lock()
        # What the adapters report, appended as they go (one atomic deque append per call) and folded
        # into ``_usage`` when read or when many have piled up.
        self._noted: collections.deque[tuple[str | None, float, bool, int, float]] = collections.deque()
        self._usage: dict[str, Any] = {
            "tool_calls": 0,
            "tool_errors": 0,
            "model_calls": 0,
            "model_errors": 0,
            "tokens": 0,
            "cost_usd": 0.0,
            "consecutive_failures": 0,
            "refusals": 0,
        }
        # The last tool calls, as noted (tool, ts, ok, 0, 0.0): the snapshot's recent_tool_calls.
        self._recent: collections.deque[tuple[str | None, float, bool, int, float]] = collections.deque(
            maxlen=max(1, recent_tool_calls)
        )
        self.effects = EffectLedger()  # the side-effect ledger (m99.effects)
        self.captured: Capture | None = None  # what the last kill found, taken before applying it
        network.register(self)

    def __repr__(self) -> str:
        lease = " lease-lost" if self._lease_lost else ""
        return f"<Guard {self.name!r} L{self._level}{lease}>"

    # -- the frameworks it runs under -----------------------------------------------------------------

    @property
    def framework(self) -> str:
        """The frameworks as one label (``langchain``, ``crewai,langchain``)."""
        return ",".join(self.frameworks)

    def add_framework(self, name: str) -> None:
        """This agent now runs under ``name`` too (an adapter installed into it)."""
        known = () if self.frameworks == (DEFAULT_FRAMEWORK,) else self.frameworks
        self.set_frameworks((*known, name))

    def set_frameworks(self, names: Iterable[str]) -> None:
        """Replace the frameworks; the session reports a change to the control plane at once."""
        try:
            frameworks = clean_frameworks(names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        with self._lock:
            if frameworks == self.frameworks:
                return
            self.frameworks = frameworks
            watchers = tuple(self._framework_watchers)
        for watcher in watchers:
            try:
                watcher(self)
            except Exception:  # reporting never stops the agent
                logger.exception("m99: framework watcher %r failed", watcher)

    def on_frameworks(self, callback: Callable[[Guard], object]) -> None:
        """Call ``callback(guard)`` after every change of ``frameworks``."""
        with self._lock:
            self._framework_watchers.append(callback)

    def remove_on_frameworks(self, callback: Callable[[Guard], object]) -> None:
        with self._lock:
            if callback in self._framework_watchers:
                self._framework_watchers.remove(callback)

    # -- hot path: one attribute test when allowed ----------------------------------------------------

    def check_tool(self, tool: str, args: Any = None) -> None:
        """None when ``tool`` may run now with ``args``; raises ``ToolCallRefused`` otherwise."""
        if self._tool_gate:
            clear = self._clear_tool  # set only at level 0 without a lost lease: the policy alone decides
            if clear is not None and clear(args):
                return None  # no policy rule in force but the protected files, and no argument names one
            self._refuse_tool(tool)
            if self._policy is not None and self._policy.tool_gate:
                self._policy.admit_tool(self, tool, args)

    def check_model(self, model: str | None = None, max_tokens: int | None = None) -> None:
        """Raises ``ModelCallRefused`` at L3, L5, L6, while frozen by a lost lease, or when the policy
        refuses the call (its worst case, ``max_tokens`` of ``model``, is then reserved until it reports)."""
        if self._halt_gate:
            if self._level or self._lease_lost:  # else only a policy's rule set the gate
                self._refuse(ModelCallRefused, "model call refused for agent")
            policy = self._policy
            if policy is not None and policy.model_gate:
                policy.admit_model(self, model, max_tokens)

    def check_status(self) -> None:
        """Raises ``M99KillSwitchTriggered`` at L3, L5, L6, or ``LeaseExpired`` while frozen by the lease."""
        if self._halt_gate:
            self._refuse(M99KillSwitchTriggered, "kill switch holds agent")
            if self._policy is not None:
                self._policy.check_status(self)

    def attach_policy(self, gate: Any) -> None:
        """Enforce a KILLSWITCH.md gate (``m99.policy.gate.PolicyGate``) here too; None detaches."""
        with self._lock:
            old, self._policy = self._policy, gate
            self._update_gates()
        if old is not None and old is not gate:
            old.detach(self)
        if gate is not None:
            gate.attach(self)
            self._policy_gates_changed()

    @property
    def policy(self) -> Any:
        return self._policy

    def _policy_gates_changed(self) -> None:
        with self._lock:
            self._update_gates()

    def may_offer(self, tool: str) -> bool:
        """Whether ``tool`` may be offered to the model now: new tools are not registered while tools
        are frozen (L3+, lost lease), and at L4 only read-only tools are (adapters ask it where a
        framework lists tools: an MCP workbench, the tools of a ``create_agent`` model request)."""
        if not self._tool_gate or (self._level < Level.TOOL_CALL_FREEZE and not self._lease_frozen()):
            return True  # a policy rule alone refuses a call, not the offer of a tool
        return self._level == Level.RESTRICTION and not self._lease_frozen() and tool in self._read_only

    @property
    def allows_messages(self) -> bool:
        """False at L2 and above, and while frozen by a lost lease: agent-to-agent messages are withheld."""
        return not self._msg_gate

    @property
    def frozen(self) -> bool:
        """True while ``check_tool`` refuses: L3+ (at L4 read-only tools still pass) or lease lost."""
        return self._level >= Level.TOOL_CALL_FREEZE or self._lease_frozen()

    @property
    def redacting(self) -> bool:
        """True at L1+, where ``redact`` replaces protected secrets; below, ``redact`` returns its input."""
        return self._redact_gate

    @property
    def level(self) -> int:
        """The level last applied by the control plane, 0 when running normally."""
        return self._level

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def version(self) -> int:
        return self._version

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost

    @property
    def fail_open(self) -> bool:
        """Whether a lost lease leaves the agent running (fixed at construction)."""
        return self._fail_open

    @property
    def terminating(self) -> bool:
        return self._terminating

    @property
    def read_only_tools(self) -> frozenset[str]:
        return self._read_only

    def _lease_frozen(self) -> bool:
        return self._lease_lost and not self._fail_open

    def _refuse_tool(self, tool: str) -> None:
        level = self._level
        lease = self._lease_frozen()
        if level == Level.RESTRICTION and not lease and tool in self._read_only:
            return None
        if level >= Level.TOOL_CALL_FREEZE:
            reason = self._reason
            why = (
                "L4 restriction: only read-only tools may run"
                if level == Level.RESTRICTION
                else (f"L{level} {Level(level).title}")
            )
        elif lease:
            level, reason, why = Level.TOOL_CALL_FREEZE, self._lease_reason, "lease lost"
        else:
            return None  # the state was lifted between the gate test and here
        self._count_refusal()
        raise ToolCallRefused(
            f"M99: tool {tool!r} refused for agent {self.name!r}: {_explained(why, reason)}",
            tool=tool,
            level=int(level),
            reason=reason,
            agent=self.name,
        )

    def _refuse(self, cls: type[M99KillSwitchTriggered], what: str) -> None:
        level = self._level
        if level == Level.TOOL_CALL_FREEZE or level >= Level.TARGETED_TERMINATION:
            reason, why = self._reason, f"L{level} {Level(level).title}"
        elif self._lease_frozen():
            if cls is M99KillSwitchTriggered:
                cls = LeaseExpired
            level, reason = Level.TOOL_CALL_FREEZE, self._lease_reason
            why = "lease lost"
        else:
            return None
        self._count_refusal()
        raise cls(
            f"M99: {what} {self.name!r}: {_explained(why, reason)}",
            level=int(level),
            reason=reason,
            agent=self.name,
        )

    def _count_refusal(self) -> None:
        with self._usage_lock:
            self._usage["refusals"] += 1

    # -- state changes --------------------------------------------------------------------------------

    def apply_state(
        self,
        level: int,
        *,
        reason: str = "",
        version: int = 0,
        defer: Callable[[Callable[[], object]], object] | None = None,
        log: bool = True,
    ) -> bool:
        """Move to ``level`` (0-6); True when the effective level changed.

        A ``version`` lower than the last one applied is stale and ignored.  The change is enforced
        before this returns; what follows it (the log line, the ``on_change`` callbacks, at L5+ the
        terminator) runs here, or is handed to ``defer`` (the session passes its event loop's
        ``call_soon``: a push that reaches many Guards of a process at once then enforces on all of
        them before any of them logs).  ``log=False``: the caller logs the change (the session logs
        the changes of one push together).
        """
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 6:
            raise ValueError(f"level must be an int from 0 to 6, not {level!r}")
        level = int(level)
        with self._lock:
            if version and version < self._version:
                logger.info("m99: %s ignores stale state v%d (at v%d)", self.name, version, self._version)
                return False
            if version:
                self._version = version
            old = self._level
            if self._terminating and level < old:
                logger.warning("m99: %s is terminating at L%d; L%d ignored", self.name, old, level)
                return False
            if reason or level != old:
                self._reason = reason
            if level == old:
                return False
            if level > old:
                self.captured = capture(self, level, version, reason)  # evidence first
                for step in range(old + 1, level + 1):
                    self._level = step
                    self._run_effect(step, entering=True)
                    self._update_gates()
            else:
                for step in range(old, level, -1):
                    self._run_effect(step, entering=False)
                    self._level = step - 1
                    self._update_gates()
            terminate = level >= Level.TARGETED_TERMINATION and not self._terminating
            if terminate:
                self._terminating = True
            self.applied_at = _now()
        if defer is None:
            self._after_change(old, level, reason, terminate, log)
        else:
            defer(lambda: self._after_change(old, level, reason, terminate, log))
        return True

    def _after_change(self, old: int, new: int, reason: str, terminate: bool, log: bool) -> None:
        if log:
            log_change(self.name, old, new, reason)
        self._notify(old, new)
        if terminate:
            self._run_terminator()

    def reset_version(self) -> None:
        """Forget the last state version: the control plane starts counting again (a new database)."""
        with self._lock:
            self._version = 0

    def _run_effect(self, step: int, *, entering: bool) -> None:
        # Each step is isolated: one failing effect must not stop the others (fail closed).
        try:
            if step == Level.CREDENTIAL_REVOCATION:
                if entering:
                    self._creds.revoke_all()
                else:
                    self._creds.restore_all()
            elif step == Level.SAAS_DISCONNECTION:
                if entering:
                    network.cut(self)
                else:
                    network.uncut(self)
        except Exception as exc:
            what = f"{'entering' if entering else 'leaving'} L{step}: {type(exc).__name__}: {exc}"
            self._failures.append(what)
            logger.exception("m99: %s failed %s", self.name, what)

    def _update_gates(self) -> None:
        level = self._level
        lease = self._lease_frozen()
        policy = self._policy
        tool_rule = policy is not None and policy.tool_gate
        model_rule = policy is not None and policy.model_gate
        # A policy's model rule (a budget) leaves ``quiet``: adapters ask ``check_model`` of every
        # Guard whatever ``quiet`` says, and tool calls then pay nothing for the budget.
        quiet = level == 0 and not lease and not tool_rule
        clear = policy.clear_tool if level == 0 and not lease and tool_rule else None
        if not quiet:
            self.quiet = False  # first, so no reader skips a gate about to be set
        if clear is None:
            self._clear_tool = None
        self._redact_gate = level >= Level.CREDENTIAL_REVOCATION
        self._msg_gate = level >= Level.SAAS_DISCONNECTION or lease
        self._tool_gate = level >= Level.TOOL_CALL_FREEZE or lease or tool_rule
        self._halt_gate = level == Level.TOOL_CALL_FREEZE or level >= Level.TARGETED_TERMINATION or lease or model_rule
        if clear is not None:
            self._clear_tool = clear  # last, like ``quiet``
        if quiet:
            self.quiet = True  # last, once every gate is clear
        set_redacting(self, self._redact_gate)  # after the gates: a watcher must not delay a freeze

    def set_lease_lost(self, reason: str) -> bool:
        """The control plane is out of reach past the lease: freeze (L3 behaviour) unless ``fail_open``."""
        with self._lock:
            changed = not self._lease_lost
            self._lease_lost = True
            self._lease_reason = reason or "lease expired"
            self._update_gates()
        if not changed:
            return False
        if self._fail_open:
            logger.warning("m99: %s lost its lease (%s); fail-open, still running", self.name, reason)
            return False
        logger.warning("m99: %s lost its lease (%s); frozen", self.name, reason)
        self._notify(self._level, self._level)
        return True

    def set_lease_restored(self) -> bool:
        with self._lock:
            changed = self._lease_lost
            self._lease_lost = False
            self._lease_reason = ""
            self._update_gates()
        if not changed:
            return False
        logger.info("m99: %s lease restored", self.name)
        if self._fail_open:
            return False
        self._notify(self._level, self._level)
        return True

    def on_change(self, callback: ChangeCallback) -> ChangeCallback:
        """Call ``callback(guard, old_level, new_level)`` after every applied change (usable as decorator)."""
        with self._lock:
            self._callbacks.append(callback)
        return callback

    def remove_on_change(self, callback: ChangeCallback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def _notify(self, old: int, new: int) -> None:
        for callback in tuple(self._callbacks):
            try:
                callback(self, old, new)
            except Exception:  # observation never stops enforcement nor reaches the caller
                logger.exception("m99: on_change callback %r failed", callback)

    def _run_terminator(self) -> None:
        terminate = self._terminate or terminate_process
        try:
            terminate(self.grace_seconds)
        except Exception:
            if terminate is terminate_process:
                raise
            # Enforcement fails closed: a broken custom terminator falls back to the default one.
            logger.exception("m99: custom terminator failed; using SIGTERM/SIGKILL")
            terminate_process(self.grace_seconds)

    def declare_read_only(self, *tools: str) -> None:
        """Add tools that may still run under L4 (adapters learn them from tool metadata)."""
        with self._lock:
            self._read_only = self._read_only | frozenset(tools)

    def set_task(self, text: str | None) -> None:
        self._task = None if text is None else str(text)[:TASK_LIMIT]

    @contextmanager
    def activate(self) -> Iterator[Guard]:
        """Make this the ``current_guard`` (network rule, adapters) for the ``with`` block."""
        token = current_guard.set(self)
        try:
            yield self
        finally:
            current_guard.reset(token)


network.bind_context(current_guard)
