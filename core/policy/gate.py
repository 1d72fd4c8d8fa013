"""The Guard's side of a KILLSWITCH.md policy: turns the engine's decisions into what a framework hook
needs (a return, a delay, a wait, a raised refusal), carries a model call's reservation from its start
to its end, runs the timer of level timeouts and the runtime limit, and applies FORBIDDEN.network to
the process's egress guard.

The Guard holds one ``PolicyGate`` and asks it only while the engine's precomputed gates are set (the
Guard folds ``tool_gate`` / ``model_gate`` into its own gates), so a call with no rule to see and no
level in force costs the Guard's usual attribute test.
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import network
from ..errors import M99KillSwitchTriggered, NotAuthorised
from .decision import ModelTicket, PolicyEvent
from .engine import PolicyEngine
from .model import Policy, Stage
from .parse import PolicyError, load_policy
from .prices import PriceTable, resolve_prices

if TYPE_CHECKING:
    from ..guard import Guard

__all__ = ["ENV_VAR", "PolicyGate", "load_for_process", "resolve_policy_path"]

logger = logging.getLogger("m99.policy")

ENV_VAR = "M99_POLICY"  # the policy file ``m99 run --policy`` hands to the command
_TICKET_TTL = 600.0  # seconds after which a model call that never reported back gives its reservation up
_LOOKS = 100  # times the calls in flight are looked through while other threads change them
_MAX_WAIT = 24 * 3600.0  # a paused call waits at most this long before it is refused (fail closed)
_COMMAND_MAX_AGE = 300.0  # an operator's pushed act older (or newer) than this is not applied: a replay
_COMMANDS_KEPT = 256  # ids of the acts applied, so that one pushed twice is applied once

# The reservation of the model call running in this context (a thread, an asyncio task).
_ticket: contextvars.ContextVar[ModelTicket | None] = contextvars.ContextVar("m99_policy_ticket", default=None)


def resolve_policy_path(policy: str | os.PathLike[str] | bool | None) -> Path | None:
    """Which file governs: ``False`` none, a path that one, else ``$M99_POLICY``, else ./KILLSWITCH.md
    when present.  A path that is given but missing is an error (never silently unenforced)."""
    if policy is False:
        return None
    if policy is None or policy is True:
        env = os.environ.get(ENV_VAR)
        if env:
            return Path(env)
        default = Path("KILLSWITCH.md")
        if default.is_file():
            return default.resolve()
        if policy is True:
            raise PolicyError("policy=True but there is no ./KILLSWITCH.md")
        return None
    return Path(os.fspath(policy))


class PolicyGate:
    """One engine, asked by the Guards it is attached to (see ``Guard.attach_policy``)."""

    def __init__(self, engine: PolicyEngine, *, digest: str = "", tick_seconds: float = 1.0) -> None:
        self.engine = engine
        self.digest = digest  # sha256 of the file's bytes: which policy the control plane sees
        self.policy: Policy = engine.policy
        self._guards: list[Guard] = []
        self._lock = threading.Lock()
        # The model calls admitted and not yet reported back, oldest first: ticket -> when admitted
        # (monotonic).  Each step on it (a store, a pop, a copy) is one step under the interpreter
        # lock, so a model call's start and end take no lock of the gate.
        self._flying: dict[ModelTicket, float] = {}
        self._stop = threading.Event()
        self._tick_seconds = max(0.01, float(tick_seconds))
        self._timer: threading.Thread | None = None
        self.tool_gate = engine.tool_gate
        self.model_gate = engine.model_gate
        # Before a tool call, the Guard's first question (``PolicyEngine.quick_tool``): True lets it run.
        self.clear_tool: Callable[[Any], bool] = engine.quick_tool
        # A tool call ended: straight to the engine (the Guard calls it after every tool call).
        self.record_tool: Callable[[str, bool], None] = engine.record_tool
        self.stopped = False
        self.evidence: dict[str, dict[str, Any]] = {}  # the Guards' snapshots at a save_state stop
        self._commands: collections.OrderedDict[str, None] = collections.OrderedDict()
        engine.on_event(self._on_event)
        net = self.policy.forbidden.network
        self._egress = net.block_public_egress
        if self._egress:
            network.set_egress_rule(net.allows)
        for notice in engine.notices:
            logger.warning("m99: %s", notice)

    # -- wiring -------------------------------------------------------------------------------------

    def attach(self, guard: Guard) -> None:
        with self._lock:
            if guard not in self._guards:
                self._guards.append(guard)
            if self._stop.is_set():  # attached again after the last Guard left: start afresh
                self._stop = threading.Event()
                self._timer = None
                net = self.policy.forbidden.network
                if net.block_public_egress and not self._egress:
                    self._egress = True
                    network.set_egress_rule(net.allows)
        self._start_timer()

    def detach(self, guard: Guard) -> None:
        with self._lock:
            if guard in self._guards:
                self._guards.remove(guard)
            last = not self._guards
        if last:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._egress:
            network.set_egress_rule(None)
            self._egress = False

    def on_event(self, listener: Callable[[PolicyEvent], object]) -> None:
        self.engine.on_event(listener)

    def _start_timer(self) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Thread(target=self._tick_loop, name="m99-policy-timer", daemon=True)
        self._timer.start()

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            deadline = self.engine.next_deadline()
            wait = self._tick_seconds
            if deadline is not None:
                wait = min(wait, max(0.005, deadline - self.engine._clock()))
            if self._stop.wait(wait):
                return
            self.engine.tick()
            self._expire_tickets()

    def _on_event(self, event: PolicyEvent) -> None:
        self._sync()
        if event.kind == "transition" and event.stage == Stage.SHUTDOWN:
            self.stopped = True
            if event.save_state:
                for guard in tuple(self._guards):
                    try:  # observation: a snapshot that fails never undoes the stop
                        self.evidence[guard.name] = guard.snapshot()
                    except Exception:
                        logger.exception("m99: policy stop: no evidence snapshot of %s", guard.name)

    def _sync(self) -> None:
        """The engine's gates moved: fold them into each Guard's precomputed gates."""
        self.tool_gate = self.engine.tool_gate
        self.model_gate = self.engine.model_gate
        for guard in tuple(self._guards):
            guard._policy_gates_changed()

    # -- before a call ------------------------------------------------------------------------------

    def _wait(self, decision: Any, ask: Callable[[], Any]) -> Any:
        waited = 0.0
        while decision.verdict == "wait":
            if waited > _MAX_WAIT:
                break
            start = time.monotonic()
            self.engine.wait_for_change(max(0.01, decision.delay))
            waited += time.monotonic() - start
            decision = ask()
        return decision

    def admit_tool(self, guard: Guard, tool: str, args: Any) -> None:
        """Return when ``tool`` may run (after a throttle's delay or a pause), raise when refused."""
        engine = self.engine
        if engine.quick_tool(args):
            return  # the allowed call of a policy with nothing in force: no lock, no decision object
        read_only = tool in guard.read_only_tools
        decision = engine.admit_tool(tool, args, read_only=read_only)
        decision = self._wait(decision, lambda: self.engine.admit_tool(tool, args, read_only=read_only))
        if decision.verdict != "allow":
            guard._count_refusal()
            raise decision.error(tool=tool, agent=guard.name)
        if decision.delay > 0:
            time.sleep(decision.delay)

    def admit_model(self, guard: Guard, model: str | None, max_tokens: int | None) -> None:
        """Reserve the call's worst case (held until it reports back) or raise the refusal."""
        now = time.monotonic()
        flying = self._flying
        if flying:
            self._expire_tickets(now)
        admitted = self.engine.reserve_model(model, max_tokens)
        if isinstance(admitted, ModelTicket):  # the usual answer: it runs now, no Decision built
            _ticket.set(admitted)
            flying[admitted] = now
            return
        decision = admitted
        if decision.verdict == "wait":
            decision = self._wait(decision, lambda: self.engine.admit_model(model, max_tokens=max_tokens))
        if decision.verdict != "allow":
            guard._count_refusal()
            raise decision.error(agent=guard.name)
        ticket = decision.ticket
        if ticket is not None:
            _ticket.set(ticket)
            flying[ticket] = now
        if decision.delay > 0:
            time.sleep(decision.delay)

    def lifted_by_operator(self) -> None:
        """The control plane lifted the policy's L3 (``m99 restore``, authorised and audited there):
        the policy resumes, unless its file says ``allow_restart: false`` (then only a restart of the
        agent, by its owner, lifts it).  Observation: never raises."""
        try:
            if self.engine.stage == Stage.SHUTDOWN:
                self.engine.resume("operator (m99 restore)", "the control plane lifted the policy's stop")
        except NotAuthorised as exc:
            logger.warning("m99: the policy's stop stays: %s", exc.message)
        except Exception:
            logger.exception("m99: could not resume the policy")

    def command(self, event: Mapping[str, Any], *, agent_id: str) -> bool:
        """An operator's act on this policy, authorised and audited by the control plane and pushed
        signed (the session checked the signature): ``resume`` a throttle or a pause, ``escalate`` one
        level now, ``override`` one trigger until an expiry.  Applied once, only when it names this
        agent and is fresh; the transition it makes is reported like any other.  Observation: never
        raises; False when not applied (logged)."""
        try:
            return self._command(event, agent_id)
        except NotAuthorised as exc:
            logger.warning("m99: policy %s not applied: %s", event.get("op"), exc.message)
        except Exception:
            logger.exception("m99: could not apply a policy command")
        return False

    def _command(self, event: Mapping[str, Any], agent_id: str) -> bool:
        op, command_id, issued = event.get("op"), event.get("id"), event.get("issued_at")
        if event.get("agent_id") != agent_id or not isinstance(command_id, str) or not command_id:
            return False
        if not isinstance(issued, int | float) or abs(time.time() - float(issued)) > _COMMAND_MAX_AGE:
            logger.warning("m99: a policy %s issued at %r is stale: not applied", op, issued)
            return False
        with self._lock:
            if command_id in self._commands:
                return False  # pushed again (a reconnect): applied once
            self._commands[command_id] = None
            while len(self._commands) > _COMMANDS_KEPT:
                self._commands.popitem(last=False)
        by = str(event.get("by") or "operator")[:320]
        reason = str(event.get("reason") or "")[:2000]
        engine = self.engine
        if op == "resume":
            if engine.stage == Stage.SHUTDOWN:
                logger.warning("m99: the policy's stop is lifted with `m99 restore`, not `m99 policy resume`")
                return False
            return engine.resume(by, reason)
        if op == "escalate":
            return engine.escalate(by, reason)
        if op == "override":
            until = event.get("until")
            trigger = event.get("trigger")
            if not isinstance(until, int | float) or not math.isfinite(until) or not isinstance(trigger, str):
                return False
            # The expiry is wall-clock time on the server; the engine's clock may be another.
            return engine.override(trigger, engine._clock() + (float(until) - time.time()), by, reason)
        logger.warning("m99: unknown policy command %r: not applied", op)
        return False

    def check_status(self, guard: Guard) -> None:
        if self.engine.stage == Stage.SHUTDOWN:
            decision = self.engine.admit_tool("(status)")
            raise M99KillSwitchTriggered(
                f"M99 policy: {decision.reason}", level=3, reason=decision.rule, agent=guard.name
            )

    # -- after a call -------------------------------------------------------------------------------

    def settle(self, tokens: int, cost_usd: float | None, ok: bool, model: str | None = None) -> None:
        # This context's ticket stays in the variable once settled: done, it is not settled again.
        ticket = _ticket.get()
        if ticket is not None and not ticket.done:
            self._flying.pop(ticket, None)
        else:
            # Not this context's (a framework reported from another thread): the oldest in flight.
            ticket = self._oldest_in_flight()
        cost = cost_usd if cost_usd else None
        self.engine.settle_model(ticket, model=model, tokens=max(0, int(tokens)), cost_usd=cost, ok=ok)

    def _oldest_in_flight(self) -> ModelTicket | None:
        """Take the oldest call in flight out of them, or None; the done ones before it leave too.  A
        pop claims a call: of two threads after the same one, one gets it."""
        flying = self._flying
        for _ in range(_LOOKS):
            ahead: list[ModelTicket] = []
            found = None
            try:
                for held in flying:
                    if not held.done:
                        found = held
                        break
                    ahead.append(held)
            except RuntimeError:  # another thread changed them meanwhile: look again
                continue
            for held in ahead:
                flying.pop(held, None)
            if found is None or flying.pop(found, None) is not None:
                return found
        return None  # settled as a call the gate did not see; its reservation is given up at its expiry

    def _expire_tickets(self, now: float | None = None) -> None:
        """Give up the reservations of the calls in flight past their time (``_TICKET_TTL``)."""
        edge = (time.monotonic() if now is None else now) - _TICKET_TTL
        flying = self._flying
        stale: list[ModelTicket] = []
        try:
            for held, admitted in flying.items():
                if admitted >= edge:
                    break  # the usual case, at the first: nothing held past its time
                stale.append(held)
        except RuntimeError:  # changed by another thread meanwhile: the next look sees them
            return
        for held in stale:
            if flying.pop(held, None) is not None:
                self.engine.release_model(held)  # a no-op for one done meanwhile

    def status(self) -> dict[str, Any]:
        return {"file": str(self.policy.source or ""), "sha256": self.digest, **self.engine.status()}


def load_for_process(
    policy: str | os.PathLike[str] | bool | None,
    *,
    agent: str,
    prices: PriceTable | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    data_dir: Path | None = None,
    session_id: str = "",
    **engine_options: Any,
) -> PolicyGate | None:
    """The gate of the policy this process runs under, or None (no file, or ``policy=False``).
    An invalid file raises ``PolicyError`` here, before the agent runs."""
    path = resolve_policy_path(policy)
    if path is None:
        return None
    loaded = load_policy(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    table = resolve_prices(prices if not isinstance(prices, os.PathLike) else Path(prices), data_dir=data_dir)
    state_file = None
    if loaded.triggers.cost_limit_daily_usd is not None and data_dir is not None:
        state_file = Path(data_dir) / f"policy-daily-{agent}.json"
    engine = PolicyEngine(
        loaded, prices=table, state_file=state_file, agent_id=agent, session_id=session_id, **engine_options
    )
    return PolicyGate(engine, digest=digest)
