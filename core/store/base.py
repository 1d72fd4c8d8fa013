"""The store contract: what the control plane needs from a database, for any implementation.

The database holds the truth.  Everything the control plane decides is written in one
``transaction()``; what a replica keeps in memory is a cache it rebuilds from the store
(``Tx.agents_changed_since`` / ``Tx.directives_changed_since``) whenever the change bus says
something changed.

Transactions and isolation
--------------------------
- ``store.transaction()`` yields a ``Tx`` for one unit of work: every write inside it commits
  together or not at all (an exception rolls it back).  Write transactions that take the state
  version (``next_version``), the registry sequence (``next_registry_seq``) or the audit head
  (``audit_head(lock=True)``) are serialised on that counter across every process sharing the
  database, so versions, registry sequence numbers and audit sequence numbers are assigned in
  commit order with no gaps and no duplicates.  Take them in that order (version, registry, audit
  head last) so two transactions never wait on each other in a cycle.
- Rows a transaction reads with ``lock_*`` are locked until it ends: a concurrent transaction that
  wants the same row waits and then reads the committed value (read committed).
- ``store.snapshot()`` yields a read-only ``Tx`` that sees one consistent state.
- Nested ``transaction()`` calls on one thread join the outer transaction.
- After a commit that assigned a version or registry sequence number, or appended to the audit chain,
  the store's change bus calls
  every subscriber in this process; other processes hear of it through the bus as well (PostgreSQL
  LISTEN/NOTIFY), and once more after their bus reconnects, so a subscriber must catch up by version
  and must not assume it hears of each change exactly once.

Every integer stored fits 63 bits; strings are bounded by the HTTP layer before they get here.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..audit import Checkpoint
from .records import (
    AckRecord,
    AgentRecord,
    AuditRow,
    AuthorizationRecord,
    BudgetRecord,
    CredentialRecord,
    DirectiveRecord,
    EvidenceRecord,
    ExecutionRecord,
    TokenRecord,
)

__all__ = ["ChangeBus", "Store", "StoreError", "Tx"]

log = logging.getLogger("m99.store")


class StoreError(Exception):
    """The database could not be opened, migrated, read or written."""


class ChangeBus:
    """Subscribers called after a change commits (in this process), or when another process says one
    did.  ``notify`` never raises: a failing subscriber is logged."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def notify(self) -> None:
        with self._lock:
            subscribers = tuple(self._subscribers)
        for callback in subscribers:
            try:
                callback()
            except Exception:
                log.exception("m99: change subscriber %r failed", callback)


class Tx(abc.ABC):
    """One transaction (or snapshot) of a store."""

    # -- counters and settings ----------------------------------------------------------------------
    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def version(self) -> int:
        """The current state version."""

    @abc.abstractmethod
    def next_version(self) -> int:
        """Take the next state version (locks it until commit)."""

    @abc.abstractmethod
    def registry_seq(self) -> int:
        """The current registry sequence number (bumped by every change of an agent row)."""

    @abc.abstractmethod
    def next_registry_seq(self) -> int: ...

    # -- agents -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_agent(self, name: str, *, lock: bool = False) -> AgentRecord | None: ...

    @abc.abstractmethod
    def get_agent_by_id(self, agent_id: str) -> AgentRecord | None: ...

    @abc.abstractmethod
    def list_agents(self) -> list[AgentRecord]: ...

    @abc.abstractmethod
    def agents_changed_since(self, seq: int) -> list[AgentRecord]: ...

    @abc.abstractmethod
    def put_agent(self, agent: AgentRecord) -> None:
        """Insert or replace the agent row (``agent.changed`` must be a fresh registry sequence)."""

    @abc.abstractmethod
    def set_agent_status(self, names: Sequence[str], status: str, reason: str, at: float, changed: int) -> None: ...

    @abc.abstractmethod
    def set_agent_frameworks(self, name: str, frameworks: Sequence[str], changed: int) -> None: ...

    @abc.abstractmethod
    def delete_agents(self, names: Sequence[str], changed: int) -> None:
        """Forget agents (and their credentials): their names are free to be bound again.  ``changed``
        (a fresh registry sequence) files the deletion for ``forgotten_since``."""

    @abc.abstractmethod
    def forgotten_since(self, seq: int) -> list[str]:
        """Names deleted at a registry sequence above ``seq`` (and not registered again since)."""

    @abc.abstractmethod
    def record_liveness(self, beats: Sequence[tuple[str, int, float]]) -> None:
        """(name, seq, seen) of many agents: each row keeps the larger seq and the later time."""

    @abc.abstractmethod
    def liveness_since(self, since: float) -> list[tuple[str, int, float]]:
        """(name, last_seq, last_seen) of agents seen after ``since`` (any process's heartbeats)."""

    @abc.abstractmethod
    def silent_agents(self, cutoff: float) -> list[str]:
        """Active agents whose last heartbeat is before ``cutoff``."""

    @abc.abstractmethod
    def stale_agents(self, status: str, before: float) -> list[str]:
        """Agents in ``status`` since before ``before``."""

    # -- credentials (keyed fingerprints only) ------------------------------------------------------
    @abc.abstractmethod
    def add_credentials(self, creds: Sequence[CredentialRecord]) -> None: ...

    @abc.abstractmethod
    def list_credentials(self, agent: str) -> list[CredentialRecord]: ...

    @abc.abstractmethod
    def set_credentials_revoked(self, agents: Sequence[str], revoked: int, at: float) -> int:
        """Raise agents' credentials to ``revoked`` (1 restorable, 2 for good), or with 0 restore only
        the restorable ones; the number of rows changed."""

    # -- tokens (hashes only) -----------------------------------------------------------------------
    @abc.abstractmethod
    def insert_token(self, token: TokenRecord) -> None: ...

    @abc.abstractmethod
    def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    def get_token(self, token_id: str, *, lock: bool = False) -> TokenRecord | None: ...

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    def live_tokens(self, role: int, *, lock: bool = False) -> list[TokenRecord]:
        """Unrevoked tokens of ``role``; with ``lock`` they stay locked until commit."""

    @abc.abstractmethod
    def revoke_token(self, token_id: str, at: float) -> bool: ...

    # -- authorisations -----------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_authorization(self, auth: AuthorizationRecord) -> None: ...

    @abc.abstractmethod
    def get_authorization(self, auth_id: str) -> AuthorizationRecord | None: ...

    @abc.abstractmethod
    def list_authorizations(self, status: str | None = None, limit: int = 200) -> list[AuthorizationRecord]: ...

    @abc.abstractmethod
    def close_authorization(
        self, auth_id: str, from_status: str, to_status: str, at: float, execution_id: str | None = None
    ) -> bool:
        """Move an authorisation out of ``from_status`` atomically; False if it was not there (another
        transaction, maybe on another replica, moved it first)."""

    @abc.abstractmethod
    def expired_authorizations(self, now: float) -> list[str]: ...

    # -- executions and acknowledgements ------------------------------------------------------------
    @abc.abstractmethod
    def insert_execution(self, execution: ExecutionRecord) -> None: ...

    @abc.abstractmethod
    def get_execution(self, execution_id: str) -> ExecutionRecord | None: ...

    @abc.abstractmethod
    def list_executions(self, limit: int = 50) -> list[ExecutionRecord]: ...

    @abc.abstractmethod
    def insert_ack(self, ack: AckRecord) -> bool:
        """Record an agent's acknowledgement of an execution; False if one is recorded already."""

    @abc.abstractmethod
    def list_acks(self, execution_id: str) -> list[AckRecord]: ...

    @abc.abstractmethod
    def insert_evidence(self, evidence: EvidenceRecord) -> bool:
        """Keep a signed snapshot; False if this signer's one for the execution is kept already."""

    @abc.abstractmethod
    def list_evidence(self, execution_id: str) -> list[EvidenceRecord]: ...

    # -- fleet budgets (m99.control.budgets) ---------------------------------------------------------
    @abc.abstractmethod
    def budget_shares(self, scope: str, day: str, *, lock: bool = False) -> list[BudgetRecord]:
        """Every agent's share of ``scope``'s budget on ``day``; ``lock`` serialises leases (replicas)."""

    @abc.abstractmethod
    def put_budget_share(self, share: BudgetRecord) -> None:
        """Insert or replace one agent's share."""

    @abc.abstractmethod
    def list_budget_shares(self, since_day: str, limit: int = 1000) -> list[BudgetRecord]:
        """The shares of ``since_day`` and later, newest day first."""

    # -- directives ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_directive(self, directive: DirectiveRecord) -> None: ...

    @abc.abstractmethod
    def active_directives(self) -> list[DirectiveRecord]: ...

    @abc.abstractmethod
    def directives_changed_since(self, version: int) -> list[DirectiveRecord]:
        """Directives added or lifted at a version above ``version``."""

    @abc.abstractmethod
    def lift_directives(self, ids: Sequence[str], at: float, by: str, version: int) -> None: ...

    # -- audit chain --------------------------------------------------------------------------------
    @abc.abstractmethod
    def audit_head(self, *, lock: bool = False) -> tuple[int, str] | None:
        """(seq, hash) of the newest entry; with ``lock`` the head is held until commit, so appends
        from every process form one chain."""

    @abc.abstractmethod
    def append_audit(self, rows: Sequence[AuditRow]) -> None:
        """Append entries after ``audit_head(lock=True)`` (their seqs follow the head's)."""

    @abc.abstractmethod
    def insert_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    @abc.abstractmethod
    def delete_checkpoint(self, seq: int) -> None: ...

    @abc.abstractmethod
    def list_checkpoints(self) -> list[Checkpoint]: ...

    @abc.abstractmethod
    def audit_page(self, after: int, limit: int) -> list[AuditRow]: ...

    @abc.abstractmethod
    def iter_audit(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes, str]]:
        """(seq, body, hash) in seq order, from ``start`` up to ``stop`` (exclusive)."""


class Store(abc.ABC):
    """A database the control plane keeps its truth in (see the module docstring for the contract)."""

    location: str  # where, for people: a path, or a URL without its password
    changes: ChangeBus

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]: ...

    @abc.abstractmethod
    def snapshot(self) -> AbstractContextManager[Tx]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def health(self) -> dict[str, Any]:
        """What the store can say about itself for ``/metrics`` and ``m99 status``."""
        return {"kind": type(self).__name__, "location": self.location}
