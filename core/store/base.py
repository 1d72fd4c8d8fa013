"""The storage interface of the control plane.

A store keeps agents, credentials (fingerprints only), tokens (hashes only),
authorisations, executions, directives and the audit chain.  Every mutating act of the
control plane runs inside one ``transaction()`` so nothing is ever half-written.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

Row = dict[str, Any]


class StoreError(Exception):
    """The database could not be opened, migrated or written."""


class Store(abc.ABC):
    """What the control plane needs from a database."""

    location: str

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # meta
    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    # agents
    @abc.abstractmethod
    def upsert_agent(self, row: Row) -> None: ...

    @abc.abstractmethod
    def list_agents(self) -> list[Row]: ...

    @abc.abstractmethod
    def record_heartbeat(self, name: str, seq: int, last_seen: float) -> None: ...

    @abc.abstractmethod
    def set_agent_status(self, names: Sequence[str], status: str) -> None: ...

    # credentials
    @abc.abstractmethod
    def add_credentials(self, agent: str, creds: Sequence[Row]) -> None: ...

    @abc.abstractmethod
    def list_credentials(self, agent: str | None = None) -> list[Row]: ...

    @abc.abstractmethod
    def set_credentials_revoked(self, agents: Sequence[str], revoked: int, at: float | None) -> int: ...

    # tokens
    @abc.abstractmethod
    def insert_token(self, row: Row) -> None: ...

    @abc.abstractmethod
    def token_by_hash(self, token_hash: str) -> Row | None: ...

    @abc.abstractmethod
    def list_tokens(self) -> list[Row]: ...

    @abc.abstractmethod
    def revoke_token(self, token_id: str, at: float) -> bool: ...

    # authorisations
    @abc.abstractmethod
    def insert_authorization(self, row: Row) -> None: ...

    @abc.abstractmethod
    def get_authorization(self, auth_id: str) -> Row | None: ...

    @abc.abstractmethod
    def list_authorizations(self, status: str | None = None) -> list[Row]: ...

    @abc.abstractmethod
    def close_authorization(
        self, auth_id: str, from_status: str, to_status: str, at: float, execution_id: str | None = None
    ) -> bool:
        """Move an authorisation out of ``from_status`` atomically; False if it was not there."""

    # executions
    @abc.abstractmethod
    def insert_execution(self, row: Row) -> None: ...

    @abc.abstractmethod
    def get_execution(self, execution_id: str) -> Row | None: ...

    @abc.abstractmethod
    def list_executions(self, limit: int = 50) -> list[Row]: ...

    @abc.abstractmethod
    def record_ack(self, execution_id: str, agent: str, version: int, acked_at: float, ms: float) -> None: ...

    @abc.abstractmethod
    def list_acks(self, execution_id: str) -> list[Row]: ...

    # directives
    @abc.abstractmethod
    def insert_directive(self, row: Row) -> None: ...

    @abc.abstractmethod
    def active_directives(self) -> list[Row]: ...

    @abc.abstractmethod
    def lift_directives(self, ids: Sequence[str], at: float, by: str) -> None: ...

    # audit
    @abc.abstractmethod
    def audit_head(self) -> tuple[int, str] | None: ...

    @abc.abstractmethod
    def append_audit(self, rows: Sequence[tuple[int, str, str, bytes, str]]) -> None:
        """rows: (seq, ts, kind, body, hash)."""

    @abc.abstractmethod
    def insert_checkpoint(self, seq: int, hash_: str, ts: str, signature: str) -> None: ...

    @abc.abstractmethod
    def delete_checkpoint(self, seq: int) -> None: ...

    @abc.abstractmethod
    def iter_audit(self, start: int = 0, batch: int = 10_000) -> Iterator[tuple[int, bytes, str]]: ...

    @abc.abstractmethod
    def audit_page(self, after: int, limit: int) -> list[Row]: ...

    @abc.abstractmethod
    def list_checkpoints(self) -> list[Row]: ...
