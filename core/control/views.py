"""What operators read: agents, status and counts, made fast enough to serve a large fleet.

``/api/status`` of 5,000 agents under 5,000 directives is megabytes of JSON asked for every few seconds
by every dashboard and terminal.  Each agent's description is serialised once per change of the agent
or of the state version and kept as bytes; only its liveness (last heartbeat, sequence) is written per
request, and the directive list is serialised once per state version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .agents import Agent, Registry, iso
from .directives import DirectiveIndex, directive_view
from .settings import Settings
from .state import State

__all__ = ["Views"]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class Views:
    def __init__(
        self,
        registry: Registry,
        index: DirectiveIndex,
        state: State,
        settings: Settings,
        armed: Callable[[], list[dict[str, Any]]],
        head: Callable[[], tuple[int, str]],
    ) -> None:
        self.registry = registry
        self.index = index
        self.state = state
        self.settings = settings
        self._armed = armed
        self._head = head
        # What else status shows (recent halts, SLO breaches, drills, break-glass), set by the facade.
        self.notices: Callable[[], dict[str, Any]] = dict
        # agent id -> (registry change, state version, level, JSON of the agent without liveness)
        self._agents: dict[str, tuple[int, int, int, bytes]] = {}
        self._directives: tuple[int, bytes] = (-1, b"[]")

    # -- one agent --------------------------------------------------------------------------------
    def _static(self, agent: Agent) -> dict[str, Any]:
        return {
            "name": agent.name,
            "agent_id": agent.agent_id,
            "kind": agent.kind,
            "frameworks": list(agent.frameworks),
            "framework": ",".join(agent.frameworks),
            "pid": agent.pid,
            "host": agent.host,
            "status": agent.status,
            "status_reason": agent.status_reason,
            "level": self.state.level(agent),
            "incarnation": agent.incarnation,
            "read_only_tools": list(agent.read_only_tools),
            "policy": agent.policy or None,
        }

    def describe(self, agent: Agent, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        return {
            **self._static(agent),
            "last_seen": iso(agent.last_seen),
            "seconds_since_heartbeat": round(now - agent.last_seen, 3),
            "last_seq": agent.last_seq,
        }

    def _fragment(self, agent: Agent, version: int) -> tuple[int, bytes]:
        cached = self._agents.get(agent.agent_id)
        if cached is None or cached[0] != agent.changed or cached[1] != version:
            static = self._static(agent)
            cached = (agent.changed, version, static["level"], _dumps(static)[:-1])
            if len(self._agents) > 4 * max(1000, len(self.registry)):
                self._agents.clear()  # registrations replace ids: drop the dead ones now and then
            self._agents[agent.agent_id] = cached
        return cached[2], cached[3]

    # -- lists ------------------------------------------------------------------------------------
    def _listed(self, include_stopped: bool) -> list[Agent]:
        agents = sorted(self.registry.all(), key=lambda a: a.name)
        return [a for a in agents if include_stopped or a.status != "stopped"]

    def _agents_json(self, agents: list[Agent]) -> tuple[bytes, int]:
        """The agents as a JSON array, and how many of them are held (level > 0)."""
        now = time.time()
        version = self.state.version
        seconds: dict[int, str] = {}
        parts: list[bytes] = []
        held = 0
        for agent in agents:
            level, prefix = self._fragment(agent, version)
            held += level > 0
            seen = agent.last_seen
            whole = int(seen)
            stamp = seconds.get(whole)
            if stamp is None:
                stamp = seconds[whole] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            parts.append(
                prefix
                + (
                    f',"last_seen":"{stamp}.{int(seen % 1 * 1e6):06d}Z",'
                    f'"seconds_since_heartbeat":{round(now - seen, 3)},"last_seq":{agent.last_seq}}}'
                ).encode()
            )
        return b"[" + b",".join(parts) + b"]", held

    def agents_json(self, *, include_stopped: bool = False) -> bytes:
        return self._agents_json(self._listed(include_stopped))[0]

    def list(self, *, include_stopped: bool = False) -> list[dict[str, Any]]:
        now = time.time()
        return [self.describe(a, now) for a in self._listed(include_stopped)]

    def directives_json(self) -> bytes:
        version = self.state.version
        if self._directives[0] != version:
            self._directives = (version, _dumps([directive_view(d) for d in self.index.all()]))
        return self._directives[1]

    # -- status -----------------------------------------------------------------------------------
    def status_json(self) -> bytes:
        armed = self._armed()
        listed = self._listed(False)
        agents, held = self._agents_json(listed)
        seq, hash_ = self._head()
        summary = {
            "status": "armed" if armed else ("engaged" if len(self.index) else "idle"),
            "version": self.state.version,
            "agents_total": len(listed),
            "agents_held": held,
            "agents_stopped": sum(1 for a in self.registry.all() if a.status == "stopped"),
            "armed": armed,
            "audit_head": {"seq": seq, "hash": hash_},
            **self.notices(),
            "settings": {
                "heartbeat_interval": self.settings.heartbeat_interval,
                "missed_heartbeats": self.settings.missed_heartbeats,
                "lease_seconds": self.settings.lease,
                "deadman_level": self.settings.deadman_level,
                "enrol": self.settings.enrol,
                "halt_slo": self.settings.halt_slo,
                "two_person": self.settings.two_person,
            },
        }
        return _dumps(summary)[:-1] + b',"agents":' + agents + b',"directives":' + self.directives_json() + b"}"

    def status(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.status_json())
        return parsed

    def counts(self) -> dict[str, Any]:
        """The numbers ``/metrics`` shows: one pass, no JSON."""
        by_status: dict[str, int] = {"active": 0, "silent": 0, "stopped": 0, "tombstoned": 0}
        held = 0
        for agent in self.registry.all():
            by_status[agent.status] = by_status.get(agent.status, 0) + 1
            if agent.live and self.state.level(agent) > 0:
                held += 1
        return {"agents": by_status, "held": held, "directives": len(self.index), "version": self.state.version}
