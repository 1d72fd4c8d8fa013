"""The control plane, independent of HTTP: a thin facade over the services that each own one thing.

    ledger          unit of work: transaction + audit append + signed checkpoint
    tokens          operator and enrolment tokens, roles
    agents          the registry, identity rules for names, registration
    liveness        heartbeats, group commit, acknowledgements, time-to-halt
    authorizations  arm, disarm, expiry
    executions      fire L1…LN with an origin (execute, deadman, later policy and drill), halts confirmed
    evidence        the server's signed snapshot at execute, the agents' signed evidence
    drills          audited invocations marked as drills (L1-L3), their schedule
    breakglass      sealed single-use credentials that may only arm and execute, loudly audited
    directives      the active set indexed by scope, restore and lift
    state           signed state documents, catch-up from the store, push events
    deadman         the dead man's switch, gone agents, pruning
    refusals        rate limits and folded refusal audit entries
    views           what operators read (agents, status, counts), serialised once per change
    feed            what changed, pushed to dashboards and watchers
    background      the threads that flush, watch and tidy

The store holds the truth; every mutating method is one unit of work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import audit
from ..config import HEAD_FILE, SERVER_KEY_FILE, TOKEN_FILE
from ..crypto import SigningKey, write_private
from ..errors import ConfigError, Conflict, ControlPlaneError, NotFound
from ..levels import Role, Scope
from ..store import Store
from .agents import Agent, Registrations, Registry
from .authorizations import Authorizations
from .breakglass import BreakGlass
from .budgets import Budgets
from .deadman import DeadMan
from .directives import DirectiveIndex, Restores, directive_view
from .drills import Canary, Drills
from .evidence import EvidenceKeeper
from .executions import Executions
from .feed import OperatorFeed, kinds_of
from .ledger import SYSTEM_ACTOR, Ledger
from .liveness import Liveness
from .policies import PolicyCommands, PolicyReports
from .refusals import Refusals
from .settings import Settings
from .state import State
from .tokens import Principal, Tokens, checked_by_reason
from .views import Views

__all__ = ["Agent", "ControlPlane", "Principal", "Settings"]

log = logging.getLogger("m99.control")


class ControlPlane:
    """Everything the REST API and the background threads do, over one ``Store``."""

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        settings: Settings | None = None,
        *,
        key_file: Path | None = None,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.settings = settings or Settings()
        self.started_at = time.time()
        key_path = key_file or data_dir / SERVER_KEY_FILE
        try:
            self.key = SigningKey.load_or_create(key_path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot use the server key {key_path}: {exc}") from None
        self.ledger = Ledger(store, self.key, data_dir / HEAD_FILE)
        self._genesis()
        self.refusals = Refusals(self._write_refusals, self.settings.refusal_window)
        self.registry = Registry()
        self.index = DirectiveIndex()
        self.state = State(store, self.key, self.registry, self.index)
        self.state.load()
        store.changes.subscribe(self.state.sync)
        self.tokens = Tokens(store, self.ledger, self.refusals)
        self.registrations = Registrations(
            store,
            self.ledger,
            self.registry,
            self.refusals,
            self.settings,
            self.key.derive("credential-fingerprints"),
            self._level_of,
        )
        self.liveness = Liveness(
            store, self.ledger, self.registry, self.index, self.refusals, self.settings, self._frameworks_changed
        )
        self.liveness.fresh = lambda: not self.state.stale(self.settings.staleness)
        self.executions = Executions(store, self.ledger, self.registry, self.tokens, self.refusals, self.settings)
        self.executions.level_of = lambda a: self._level_of(a.name, a.kind, a.frameworks, a.status)
        self.evidence = EvidenceKeeper(store, self.registry, self.liveness, self.settings)
        self.authorizations = Authorizations(
            store, self.ledger, self.registry, self.tokens, self.executions, self.settings
        )
        self.breakglass = BreakGlass(store, self.ledger, self.tokens)
        self.drills = Drills(store, self.ledger, self.authorizations, self.executions)
        self.restores = Restores(self.ledger, self.registry, self.index, self.tokens)
        self.policies = PolicyReports(self.ledger, self.liveness, self.executions)
        self.policy_commands = PolicyCommands(self.ledger, self.tokens, self.state)
        self.budgets = Budgets(store, self.ledger, self.liveness, self.key)
        if self.settings.webhook:
            from .notify import WebhookSink

            record = lambda kind, data: self.ledger.record(kind, SYSTEM_ACTOR, data)  # noqa: E731
            slack = self.settings.webhook_format == "slack"
            self.policies.sink = WebhookSink(self.settings.webhook, self.key, slack=slack, record=record)
        self.state.staleness = self.settings.staleness
        self.deadman = DeadMan(
            store, self.ledger, self.registry, self.executions, self.settings, lambda: self.state.recovered_at
        )
        self.feed = OperatorFeed(lambda: self.state.version, lambda: self.ledger.head)
        self.state.on_sync.append(self._synced)
        self.liveness.on_acks = lambda: self.feed.changed({"executions"})
        self.views = Views(
            self.registry,
            self.index,
            self.state,
            self.settings,
            lambda: self.authorizations.list("armed"),
            lambda: self.ledger.head,
        )
        self.views.notices = self._notices
        self._notice_cache: tuple[float, dict[str, Any]] = (0.0, {})
        self.self_url: str | None = None  # where this process serves (set by the server), for the canary
        self.canary: Canary | None = None
        self.admin_token: str | None = None

    def _genesis(self) -> None:
        with self.ledger.unit() as unit:
            unit.tx.audit_head(lock=True)  # a replica starting at the same moment waits here
            stored = unit.tx.get_meta("server_public_key")
            if stored is None:
                unit.tx.set_meta("server_public_key", self.key.public_b64)
                unit.audit("genesis", SYSTEM_ACTOR, {"server_public_key": self.key.public_b64})
            elif stored != self.key.public_b64:
                raise ConfigError(
                    f"the server key does not match the database {self.store.location}: the audit chain could "
                    "not be verified with it (replicas must share one key: --key-file)"
                )

    def ensure_admin_token(self) -> str | None:
        """On first start: an admin (fleet) token, written owner-only into the data dir; never printed."""
        if self.tokens.has_tokens():
            return None
        _, token = self.tokens.mint("admin", Role.FLEET, "first start")
        write_private(self.data_dir / TOKEN_FILE, token + "\n")
        self.admin_token = token
        return token

    def _write_refusals(self, entries: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        with self.ledger.unit() as unit:
            for kind, actor, data in entries:
                unit.audit(kind, actor, data)

    def _synced(self, agents: bool, directives: bool, audit_kinds: list[str]) -> None:
        kinds = kinds_of(audit_kinds) if audit_kinds else set()
        if agents:
            kinds.add("agents")
        if directives:
            kinds |= {"directives", "agents"}
        self.feed.changed(kinds)

    def _level_of(self, name: str, kind: str, frameworks: Any, status: str) -> int:
        return 5 if status == "tombstoned" else self.index.level(name, kind, frameworks)

    def _frameworks_changed(self, agent: Agent, frameworks: tuple[str, ...]) -> None:
        with self.ledger.unit() as unit:
            unit.tx.set_agent_frameworks(agent.name, frameworks, unit.tx.next_registry_seq())
            unit.audit(
                "agent.frameworks",
                {"agent": agent.name},
                {"agent_id": agent.agent_id, "frameworks": list(frameworks), "was": list(agent.frameworks)},
            )

    def serving(self) -> None:
        """The server accepts connections from now on (silence is counted from here)."""
        self.deadman.serving()

    # -- agents (signed requests) -------------------------------------------------------------------
    def register(self, body: dict[str, Any], *, source: str = "", principal: Principal | None = None) -> dict[str, Any]:
        record = self.registrations.register(body, source=source, principal=principal)
        agent = self.registry.get(record.name)
        if agent is None or agent.agent_id != record.agent_id:
            self.registry.apply([record])
            agent = self.registry.get(record.name)
        assert agent is not None
        return {
            "agent_id": agent.agent_id,
            "name": agent.name,
            "incarnation": agent.incarnation,
            "heartbeat_interval": self.settings.heartbeat_interval,
            "lease_seconds": self.settings.lease,
            "clock_skew": self.settings.clock_skew,
            "server_public_key": self.key.public_b64,
            "epoch": self.state.epoch,
            "state": self.state.signed(agent),
        }

    def lookup(self, agent_id: str) -> Agent | None:
        """An agent id this replica does not know yet (registered on another one a moment ago)."""
        agent = self.registry.by_agent_id(agent_id)
        if agent is not None:
            return agent
        with self.store.snapshot() as tx:
            row = tx.get_agent_by_id(agent_id)
        if row is None:
            return None
        self.registry.apply([row])
        return self.registry.by_agent_id(agent_id)

    def heartbeat_answer(self, agent: Agent) -> bytes:
        return self.state.answer(agent)

    def known(self, agent_id: str) -> Agent:
        """The agent with this registration id, from this replica's registry or the store."""
        agent = self.lookup(agent_id)
        if agent is None:
            raise NotFound(f"unknown agent id {agent_id!r}: register first", code="unknown_agent")
        return agent

    def deregister(self, agent_id: str, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        agent = self.known(agent_id)
        self.liveness.check_signed(agent, "deregister", body, source=source)
        agent.last_seq = body["seq"]
        if agent.status == "tombstoned":
            return {"ok": True, "status": "tombstoned"}
        now = time.time()
        with self.ledger.unit() as unit:
            tx = unit.tx
            tx.record_liveness([(agent.name, agent.last_seq, now)])
            tx.set_agent_status([agent.name], "stopped", "deregistered", now, tx.next_registry_seq())
            unit.audit("agent.stopped", {"agent": agent.name}, {"agent_id": agent.agent_id, "reason": "deregistered"})
        return {"ok": True, "status": "stopped"}

    def policy_report(self, agent_id: str, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        """A KILLSWITCH.md transition the agent enforced: an execution of origin ``policy``, audited."""
        result = self.policies.report(self.known(agent_id), body, source)
        self.feed.changed({"executions"})
        return result

    def budget_lease(self, agent_id: str, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        """A chunk of a fleet-wide daily budget (``cost_limit_daily_scope``), signed by the server."""
        return self.budgets.lease(self.known(agent_id), body, source)

    def acknowledge(self, agent_id: str, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        """An agent applied state ``version``: its confirmed halts, with their time-to-halt."""
        agent = self.liveness.checked_ack(self.known(agent_id).agent_id, body, source)
        result = self.liveness.record_acks([(agent, body)])[0]
        if isinstance(result, Exception):
            raise result
        return {"ok": True, "executions": result}

    def acknowledge_batch(self, acks: list[dict[str, Any]], source: str = "") -> dict[str, Any]:
        """Many agents' signed acks in one request: each checked on its own, recorded in one unit."""
        results: list[dict[str, Any]] = []
        accepted: list[tuple[Agent, dict[str, Any]]] = []
        slots: list[int] = []
        for body in acks:
            result: dict[str, Any] = {"agent_id": body["agent_id"], "ok": True}
            try:
                agent = self.known(body["agent_id"])
                accepted.append((self.liveness.checked_ack(agent.agent_id, body, source), body))
                slots.append(len(results))
            except ControlPlaneError as exc:
                result.update(ok=False, error={"code": exc.code or type(exc).__name__, "message": exc.message})
            results.append(result)
        if accepted:
            for slot, outcome in zip(slots, self.liveness.record_acks(accepted), strict=True):
                if isinstance(outcome, Exception):
                    results[slot].update(ok=False, error={"code": outcome.code, "message": outcome.message})
                else:
                    results[slot]["executions"] = outcome
        return {"ok": True, "results": results}

    def agent_state(self, agent_id: str) -> dict[str, Any]:
        return self.state.signed(self.known(agent_id))

    def open_stream(self, agent_id: str, body: dict[str, Any], source: str = "") -> Agent:
        """A signed request to open the agent's push stream (``ts`` newer than its last stream's)."""
        agent = self.known(agent_id)
        self.liveness.check_signed(agent, "events", body, source=source, sequenced=False)
        if body["ts"] <= agent.stream_ts:
            raise Conflict("push stream refused: replayed (not newer than the last one)", code="replayed")
        agent.stream_ts = float(body["ts"])
        return agent

    # -- operators ----------------------------------------------------------------------------------
    def describe_agent(self, agent: Agent, now: float | None = None) -> dict[str, Any]:
        return self.views.describe(agent, now)

    def list_agents(self, *, include_stopped: bool = False) -> list[dict[str, Any]]:
        return self.views.list(include_stopped=include_stopped)

    def get_agent(self, name: str) -> dict[str, Any]:
        agent = self.registry.get(name)
        if agent is None:
            raise NotFound(f"unknown agent {name!r}")
        out = self.describe_agent(agent)
        out["credentials"] = [
            {
                "label": c.label,
                "fingerprint": c.fingerprint,
                "kind": c.kind,
                "revoked": {0: "no", 1: "revoked", 2: "revoked for good"}.get(c.revoked, "?"),
            }
            for c in self.registrations.credentials(name)
        ]
        out["directives"] = [directive_view(d) for d in self.index.for_agent(agent.name, agent.kind, agent.frameworks)]
        return out

    def forget_agent(self, who: Principal, name: str, body: dict[str, Any]) -> dict[str, Any]:
        by, reason = checked_by_reason(body.get("by"), body.get("reason"), who)
        self.tokens.require(who, Role.AUTHORITY, "forgetting an agent", by)
        return self.registrations.forget(who, name, by, reason)

    def status(self) -> dict[str, Any]:
        return self.views.status()

    def counts(self) -> dict[str, Any]:
        return self.views.counts()

    def _notices(self) -> dict[str, Any]:
        """What else ``m99 status`` shows: recent halts, drills, break-glass uses, the canary; read from
        the store at most once a second, so a status poll costs no store work."""
        at, cached = self._notice_cache
        if time.time() - at > 1.0:
            cached = {"drills": self.drills.status(), "breakglass_used": self.breakglass.pending()}
            self._notice_cache = (time.time(), cached)
        out = {**cached, "halts": self.executions.summary()}
        if self.canary is not None:
            out["canary"] = self.canary.status()
        return out

    # -- audit --------------------------------------------------------------------------------------
    def audit_page(self, after: int, limit: int) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = tx.audit_page(after, limit)
        return [{"seq": r.seq, "hash": r.hash, **json.loads(r.body)} for r in rows]

    def verify_audit(self) -> audit.VerifyResult:
        with self.store.snapshot() as tx:
            checkpoints = tx.list_checkpoints()
            head_file = self.ledger.head_file
            if head_file is not None and head_file.exists():
                checkpoints.append(audit.read_head_file(head_file)[0])
            # The head this process committed last is held in memory, out of reach of an attacker in
            # the database: deleting the newest entries and their checkpoints is still caught.
            seq, hash_ = self.ledger.head
            if seq >= 0:
                checkpoints.append(audit.sign_checkpoint(self.key, seq, hash_, audit.utc_now_iso()))
            return audit.verify_entries(tx.iter_audit(), checkpoints=checkpoints, public_key_b64=self.key.public_b64)

    def export_audit(self, page: int = 5000) -> Iterator[str]:
        """JSONL lines up to the newest signed checkpoint, read a page per snapshot."""
        with self.store.snapshot() as tx:
            checkpoints = tx.list_checkpoints()
        if not checkpoints:
            return iter(())
        latest = max(checkpoints, key=lambda c: c.seq)

        def rows() -> Iterator[tuple[int, bytes, str]]:
            start = 0
            while start <= latest.seq:
                stop = min(start + page, latest.seq + 1)
                with self.store.snapshot() as tx:
                    chunk = list(tx.iter_audit(start, stop))
                yield from chunk
                if len(chunk) < stop - start:
                    return
                start = stop

        return audit.export_jsonl(rows(), [latest], self.key.public_b64)

    def anchor(self) -> dict[str, Any]:
        """A signed checkpoint of the newest entry, to keep elsewhere (``m99 audit anchor``)."""
        with self.store.snapshot() as tx:
            head = tx.audit_head()
        seq, hash_ = head if head else (-1, audit.GENESIS_PREV)
        checkpoint = audit.sign_checkpoint(self.key, seq, hash_, audit.utc_now_iso())
        return {**checkpoint.to_dict(), "public_key": self.key.public_b64}

    # -- shortcuts the HTTP layer calls -------------------------------------------------------------
    # An operator's act is decided on what the store holds now: catch up first (two counter reads when
    # nothing changed), so an agent registered on another replica a moment ago is in scope here too.
    def arm(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        self.state.sync()
        result = self.authorizations.arm(who, body)
        if self.breakglass.holds(who):
            self.breakglass.used(who, "arm", result)
        return result

    def execute(self, who: Principal, auth_id: str, confirm: str | None = None) -> dict[str, Any]:
        self.state.sync()
        result = self.executions.execute(who, auth_id, confirm)
        if self.breakglass.holds(who):
            self.breakglass.used(who, "execute", result)
        return result

    def drill(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        self.state.sync()
        return self.drills.start(who, body)

    def disarm(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        return self.authorizations.disarm(who, body)

    def restore(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        self.state.sync()
        if self.settings.two_person:
            pending = self.breakglass.second_person(who, body)
            if pending is not None:
                return pending
        return self.restores.lift(who, body, reversible=True)

    def lift(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        self.state.sync()
        return self.restores.lift(who, body, reversible=False)

    def check_deadman(self, now: float | None = None) -> list[dict[str, Any]]:
        return self.deadman.check(now)

    def in_scope(self, scope: str) -> list[str]:
        return self.executions.in_scope(Scope.parse(scope))

    def close(self) -> None:
        self.store.changes.unsubscribe(self.state.sync)
        self.store.close()
