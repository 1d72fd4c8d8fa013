"""Policy reports: an agent's Guard tells the control plane of every KILLSWITCH.md transition it already
enforced locally (throttle, pause, shutdown, resume).

Each one is recorded as an execution whose origin is ``policy`` and audited.  A shutdown also fires L3
on the agent's own scope (``agent:NAME``), so the control plane holds the stop too, the agent confirms
it with a signed receipt (time-to-halt) and only an operator's restore lifts it there.  The other
levels are executions with no level fired and nothing to confirm.  An agent can report only about
itself, signed with its key, in sequence; it cannot fire anything but the L3 of its own scope.

The other way, ``PolicyCommands``: an operator resumes or escalates an agent's policy, an authority
overrides one of its triggers until an expiry (``m99 policy resume|escalate|override``).  Each act is
checked, audited, and once committed pushed to the agent as a signed event; the agent applies it to
its engine and reports the transition it makes like any other.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..errors import BadRequest, Conflict, NotFound
from ..levels import Level, Role, Scope
from ..policy.model import TRIGGER_KEYS
from ..store.records import ExecutionRecord
from .agents import Agent
from .executions import Executions
from .ledger import Ledger, Unit
from .liveness import Liveness
from .notify import WebhookSink
from .state import State
from .tokens import Principal, Tokens, checked_by_reason, new_id

__all__ = ["COMMAND_ROLES", "MAX_EVIDENCE_BYTES", "MAX_OVERRIDE_SECONDS", "PolicyCommands", "PolicyReports"]

log = logging.getLogger("m99.control")

MAX_EVIDENCE_BYTES = 64 * 1024  # an evidence snapshot sent with a shutdown, as JSON

_STAGE_KEYS = ("none", "level_1_throttle", "level_2_pause", "level_3_shutdown")

# Who may do what to an agent's policy: resolve a level as an operator, suspend a trigger as an authority.
COMMAND_ROLES = {"resume": Role.OPERATOR, "escalate": Role.OPERATOR, "override": Role.AUTHORITY}
MAX_OVERRIDE_SECONDS = 7 * 24 * 3600.0  # an override always ends; a week at most


class PolicyReports:
    def __init__(self, ledger: Ledger, liveness: Liveness, executions: Executions) -> None:
        self.ledger = ledger
        self.liveness = liveness
        self.executions = executions
        self.sink: WebhookSink | None = None  # m99 serve --webhook

    def report(self, agent: Agent, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        self.liveness.check_signed(agent, "policy", body, source=source)
        agent.last_seq = body["seq"]
        event: dict[str, Any] = body["event"]
        stage = str(event["stage"])
        if stage not in _STAGE_KEYS:
            raise BadRequest(f"unknown policy stage {stage!r}")
        evidence = body.get("evidence")
        if evidence is not None and len(json.dumps(evidence, default=str)) > MAX_EVIDENCE_BYTES:
            raise BadRequest(f"evidence larger than {MAX_EVIDENCE_BYTES} bytes")
        actor = {"agent": agent.name, "policy": agent.policy or None}
        reason = f"KILLSWITCH.md {event.get('rule') or event.get('trigger')}: {event.get('reason', '')}"[:1000]
        by = str(event.get("by") or f"policy:{agent.name}")
        details = {
            "agent_id": agent.agent_id,
            "policy": agent.policy or None,
            "stage": stage,
            "previous": event.get("previous"),
            "trigger": event.get("trigger"),
            "value": event.get("value"),
            "limit": event.get("limit"),
            "action": event.get("action"),
            "rule": event.get("rule"),
            "reason": event.get("reason"),
            "operator": event.get("by") or None,
            "at": event.get("at"),
        }
        with self.ledger.unit() as unit:
            unit.audit("policy.transition", actor, details)
            if event.get("notify"):
                self._notify(unit, agent, event, actor)
            if evidence is not None:
                unit.audit("policy.evidence", actor, {"agent_id": agent.agent_id, "snapshot": evidence})
            if stage == "level_3_shutdown":
                fired = self.executions.fire(
                    unit,
                    origin="policy",
                    level=Level.TOOL_CALL_FREEZE,
                    scope=Scope.parse(f"agent:{agent.name}"),
                    by=by,
                    reason=reason,
                    actor=actor,
                    token_name="",
                    auth_id=None,
                    extra={"trigger": event.get("trigger"), "policy": agent.policy or None},
                )
                return {"ok": True, "execution_id": fired["execution_id"], "level": 3}
            now = time.time()
            execution_id = new_id("exe")
            unit.tx.insert_execution(
                ExecutionRecord(
                    execution_id, None, "policy", 0, f"agent:{agent.name}", by, f"{stage}: {reason}"[:1000],
                    "", now, now, (), (), "", 0, {},
                )
            )  # fmt: skip
            unit.audit("execution.recorded", actor, {"execution_id": execution_id, "origin": "policy", **details})
        return {"ok": True, "execution_id": execution_id, "level": 0}

    def _notify(self, unit: Unit, agent: Agent, event: dict[str, Any], actor: dict[str, Any]) -> None:
        channels = [{"kind": str(c["kind"]), "target": str(c["target"])} for c in event.get("channels") or ()]
        payload = {
            "type": "m99.policy",
            "agent": agent.name,
            "agent_id": agent.agent_id,
            "policy": agent.policy or None,
            "stage": event["stage"],
            "previous": event.get("previous"),
            "trigger": event.get("trigger"),
            "reason": event.get("reason", ""),
            "action": event.get("action"),
            "channels": channels,
            "at": event.get("at"),
        }
        if self.sink is None:
            # Never dropped silently: the channels the file names, and why nothing reached them.
            why = "no webhook sink configured on the server (m99 serve --webhook URL)"
            unit.audit(
                "policy.notify_undelivered", actor, {"stage": event["stage"], "channels": channels, "reason": why}
            )
            unit.after(lambda: log.warning("m99: policy notification for %s not delivered: %s", agent.name, why))
            return
        sink = self.sink
        unit.after(lambda: sink.deliver(payload))  # once committed, on a thread of its own


class PolicyCommands:
    def __init__(self, ledger: Ledger, tokens: Tokens, state: State) -> None:
        self.ledger = ledger
        self.tokens = tokens
        self.state = state

    def command(self, who: Principal, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """``resume`` / ``escalate`` (operator role) or ``override`` (authority role) the policy of the
        agent ``body["agent"]``; audited, then pushed signed to it.  ``override`` takes ``trigger`` (a
        TRIGGERS key) and ``seconds`` (how long, at most a week)."""
        role = COMMAND_ROLES.get(op)
        if role is None:
            raise NotFound(f"no policy command {op!r}: resume, escalate or override")
        by, reason = checked_by_reason(body.get("by"), body.get("reason"), who)
        self.tokens.require(who, role, f"policy {op}", by)
        name = body.get("agent")
        self.state.sync()
        agent = self.state.registry.get(name) if isinstance(name, str) else None
        if agent is None:
            raise NotFound(f"no agent {name!r}")
        if not agent.policy:
            raise Conflict(f"agent {agent.name!r} runs under no KILLSWITCH.md", code="no_policy")
        now = time.time()
        event: dict[str, Any] = {
            "type": "policy",
            "op": op,
            "id": new_id("pol"),
            "agent": agent.name,
            "agent_id": agent.agent_id,
            "by": by,
            "reason": reason,
            "issued_at": now,
        }
        if op == "override":
            trigger, seconds = body.get("trigger"), body.get("seconds")
            if trigger not in TRIGGER_KEYS:
                raise BadRequest(f"unknown trigger {trigger!r}: one of {', '.join(TRIGGER_KEYS)}")
            if (
                not isinstance(seconds, int | float)
                or isinstance(seconds, bool)
                or not 0 < seconds <= MAX_OVERRIDE_SECONDS
            ):
                raise BadRequest(f"an override needs a duration of more than 0 and at most {MAX_OVERRIDE_SECONDS:g} s")
            event["trigger"], event["until"] = trigger, now + float(seconds)
        details = {k: v for k, v in event.items() if k != "type"} | {"policy": agent.policy}
        with self.ledger.unit() as unit:
            unit.audit(f"policy.{op}", who.actor(by), details)
            unit.after(lambda: self.state.publish(event, [agent.name]))
        answer = {"ok": True, "id": event["id"], "op": op, "agent": agent.name, "connected": agent.live}
        if op == "override":
            answer |= {"trigger": event["trigger"], "until": event["until"]}
        return answer
