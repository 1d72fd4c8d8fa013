"""The SQL both stores speak: one ``Tx`` over a DB-API cursor, written once.

Statements are written with ``?`` placeholders; a dialect that uses ``%s`` (PostgreSQL) has them
rewritten once per statement.  JSON columns hold canonical JSON text, so both stores keep the same
bytes.  What differs between the databases (locking reads, counter arithmetic, the schema's types)
is in ``Dialect``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, TypeVar

from ..audit import Checkpoint
from .base import Tx
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

R = TypeVar("R")

# Columns holding JSON, and which of them are lists (tuples in the records).
_JSON = {
    "frameworks",
    "read_only_tools",
    "metadata",
    "grants",
    "agents",
    "levels_fired",
    "targets",
    "receipt",
    "document",
}
_TUPLES = {"frameworks", "read_only_tools", "agents", "levels_fired"}
_BOOLS = {"active"}
_CHUNK = 500  # names per IN (...) list


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str  # "?" or "%s"
    for_update: str  # appended to a locking read
    integer: str  # the type a counter is cast to


SQLITE = Dialect("sqlite", "?", "", "INTEGER")
POSTGRES = Dialect("postgresql", "%s", " FOR UPDATE", "BIGINT")


def _encode(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_COLUMNS: dict[type, tuple[str, ...]] = {}


def _columns(cls: type) -> tuple[str, ...]:
    names = _COLUMNS.get(cls)
    if names is None:
        names = _COLUMNS[cls] = tuple(f.name for f in fields(cls))
    return names


def _record(cls: type[R], row: Sequence[Any], names: Sequence[str]) -> R:
    values: dict[str, Any] = {}
    for name, value in zip(names, row, strict=True):
        if name in _JSON and isinstance(value, str):
            value = json.loads(value)
            if name in _TUPLES:
                value = tuple(value)
        elif name in _BOOLS:
            value = bool(value)
        elif isinstance(value, memoryview):
            value = bytes(value)
        values[name] = value
    return cls(**values)


def _values(record: Any) -> tuple[Any, ...]:
    out = []
    for name in _columns(type(record)):
        value = getattr(record, name)
        if name in _JSON:
            value = _encode(list(value) if name in _TUPLES else value)
        elif name in _BOOLS:
            value = int(value)
        out.append(value)
    return tuple(out)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqlTx(Tx):
    """A ``Tx`` over one DB-API connection's cursor (the store opened the transaction)."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self.cur = cursor
        self.dialect = dialect
        self.changed = False  # a version or registry sequence was taken: the bus is told after commit

    # -- plumbing -----------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.dialect.placeholder == "?" else _rewrite(sql)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cur.execute(self._sql(sql), tuple(params))

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cur.executemany(self._sql(sql), [tuple(r) for r in rows])

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def _select(self, cls: type[R], where: str, params: Sequence[Any] = (), table: str = "") -> list[R]:
        names = _columns(cls)
        rows = self.execute(f"SELECT {', '.join(names)} FROM {table} {where}", params).fetchall()
        return [_record(cls, row, names) for row in rows]

    def _first(self, cls: type[R], table: str, where: str, params: Sequence[Any] = ()) -> R | None:
        found = self._select(cls, where, params, table)
        return found[0] if found else None

    def _insert(self, table: str, record: Any, conflict: str = "") -> Any:
        names = _columns(type(record))
        marks = ", ".join("?" for _ in names)
        return self.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks}){conflict}", _values(record))

    def _counter(self, key: str) -> int:
        row = self._one(
            f"UPDATE meta SET value = CAST(CAST(value AS {self.dialect.integer}) + 1 AS TEXT) WHERE key = ? "
            "RETURNING value",
            (key,),
        )
        self.changed = True
        return int(row[0])

    # -- counters and settings ----------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def version(self) -> int:
        return int(self.get_meta("state_version") or 0)

    def next_version(self) -> int:
        return self._counter("state_version")

    def registry_seq(self) -> int:
        return int(self.get_meta("registry_seq") or 0)

    def next_registry_seq(self) -> int:
        return self._counter("registry_seq")

    # -- agents -------------------------------------------------------------------------------------
    def get_agent(self, name: str, *, lock: bool = False) -> AgentRecord | None:
        where = "WHERE name = ?" + (self.dialect.for_update if lock else "")
        return self._first(AgentRecord, "agents", where, (name,))

    def get_agent_by_id(self, agent_id: str) -> AgentRecord | None:
        return self._first(AgentRecord, "agents", "WHERE agent_id = ?", (agent_id,))

    def list_agents(self) -> list[AgentRecord]:
        return self._select(AgentRecord, "ORDER BY name", (), "agents")

    def agents_changed_since(self, seq: int) -> list[AgentRecord]:
        return self._select(AgentRecord, "WHERE changed > ? ORDER BY changed", (seq,), "agents")

    def put_agent(self, agent: AgentRecord) -> None:
        names = _columns(AgentRecord)
        updates = ", ".join(f"{c} = excluded.{c}" for c in names if c != "name")
        self._insert("agents", agent, f" ON CONFLICT (name) DO UPDATE SET {updates}")

    def set_agent_status(self, names: Sequence[str], status: str, reason: str, at: float, changed: int) -> None:
        self._many(
            "UPDATE agents SET status = ?, status_reason = ?, status_at = ?, changed = ? WHERE name = ?",
            [(status, reason, at, changed, n) for n in names],
        )

    def set_agent_frameworks(self, name: str, frameworks: Sequence[str], changed: int) -> None:
        self.execute(
            "UPDATE agents SET frameworks = ?, changed = ? WHERE name = ?", (_encode(list(frameworks)), changed, name)
        )

    def delete_agents(self, names: Sequence[str], changed: int) -> None:
        for chunk in _chunks(names):
            marks = ", ".join("?" for _ in chunk)
            self.execute(f"DELETE FROM credentials WHERE agent IN ({marks})", chunk)
            self.execute(f"DELETE FROM agents WHERE name IN ({marks})", chunk)
        self._many(
            "INSERT INTO forgotten_agents (name, changed) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
            "changed = excluded.changed",
            [(n, changed) for n in names],
        )

    def forgotten_since(self, seq: int) -> list[str]:
        rows = self.execute(
            "SELECT f.name FROM forgotten_agents f LEFT JOIN agents a ON a.name = f.name "
            "WHERE f.changed > ? AND (a.name IS NULL OR a.changed < f.changed)",
            (seq,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def record_liveness(self, beats: Sequence[tuple[str, int, float]]) -> None:
        self._many(
            "UPDATE agents SET last_seq = CASE WHEN last_seq > ? THEN last_seq ELSE ? END, "
            "last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END WHERE name = ?",
            [(seq, seq, seen, seen, name) for name, seq, seen in beats],
        )

    def liveness_since(self, since: float) -> list[tuple[str, int, float]]:
        rows = self.execute("SELECT name, last_seq, last_seen FROM agents WHERE last_seen > ?", (since,)).fetchall()
        return [(str(n), int(s), float(t)) for n, s, t in rows]

    def silent_agents(self, cutoff: float) -> list[str]:
        rows = self.execute(
            "SELECT name FROM agents WHERE status = 'active' AND last_seen < ? ORDER BY last_seen", (cutoff,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def stale_agents(self, status: str, before: float) -> list[str]:
        rows = self.execute("SELECT name FROM agents WHERE status = ? AND status_at < ?", (status, before)).fetchall()
        return [str(r[0]) for r in rows]

    # -- credentials --------------------------------------------------------------------------------
    def add_credentials(self, creds: Sequence[CredentialRecord]) -> None:
        for cred in creds:
            self._insert("credentials", cred, " ON CONFLICT (agent, fingerprint) DO NOTHING")

    def list_credentials(self, agent: str) -> list[CredentialRecord]:
        return self._select(CredentialRecord, "WHERE agent = ? ORDER BY label", (agent,), "credentials")

    def set_credentials_revoked(self, agents: Sequence[str], revoked: int, at: float) -> int:
        # Raising only ever goes up; a restore (0) reverses 1 (restorable), never 2 (for good).
        cond = "revoked = 1" if revoked == 0 else "revoked < ?"
        total = 0
        for chunk in _chunks(agents):
            marks = ", ".join("?" for _ in chunk)
            params: list[Any] = [revoked, at, *chunk] + ([] if revoked == 0 else [revoked])
            cur = self.execute(
                f"UPDATE credentials SET revoked = ?, revoked_at = ? WHERE agent IN ({marks}) AND {cond}", params
            )
            total += max(0, cur.rowcount)
        return total

    # -- tokens -------------------------------------------------------------------------------------
    def insert_token(self, token: TokenRecord) -> None:
        self._insert("tokens", token)

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        return self._first(TokenRecord, "tokens", "WHERE token_hash = ?", (token_hash,))

    def get_token(self, token_id: str, *, lock: bool = False) -> TokenRecord | None:
        return self._first(
            TokenRecord, "tokens", "WHERE id = ?" + (self.dialect.for_update if lock else ""), (token_id,)
        )

    def list_tokens(self) -> list[TokenRecord]:
        return self._select(TokenRecord, "ORDER BY created_at", (), "tokens")

    def live_tokens(self, role: int, *, lock: bool = False) -> list[TokenRecord]:
        where = "WHERE role = ? AND revoked_at IS NULL ORDER BY id" + (self.dialect.for_update if lock else "")
        return self._select(TokenRecord, where, (role,), "tokens")

    def revoke_token(self, token_id: str, at: float) -> bool:
        cur = self.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, token_id))
        return bool(cur.rowcount == 1)

    # -- authorisations -----------------------------------------------------------------------------
    def insert_authorization(self, auth: AuthorizationRecord) -> None:
        self._insert("authorizations", auth)

    def get_authorization(self, auth_id: str) -> AuthorizationRecord | None:
        return self._first(AuthorizationRecord, "authorizations", "WHERE id = ?", (auth_id,))

    def list_authorizations(self, status: str | None = None, limit: int = 200) -> list[AuthorizationRecord]:
        if status is None:
            return self._select(AuthorizationRecord, "ORDER BY created_at DESC LIMIT ?", (limit,), "authorizations")
        return self._select(
            AuthorizationRecord, "WHERE status = ? ORDER BY created_at LIMIT ?", (status, limit), "authorizations"
        )

    def close_authorization(
        self, auth_id: str, from_status: str, to_status: str, at: float, execution_id: str | None = None
    ) -> bool:
        cur = self.execute(
            "UPDATE authorizations SET status = ?, closed_at = ?, execution_id = ? WHERE id = ? AND status = ?",
            (to_status, at, execution_id, auth_id, from_status),
        )
        return bool(cur.rowcount == 1)

    def expired_authorizations(self, now: float) -> list[str]:
        rows = self.execute("SELECT id FROM authorizations WHERE status = 'armed' AND expires_at < ?", (now,))
        return [str(r[0]) for r in rows.fetchall()]

    # -- executions and acknowledgements ------------------------------------------------------------
    def insert_execution(self, execution: ExecutionRecord) -> None:
        self._insert("executions", execution)

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        return self._first(ExecutionRecord, "executions", "WHERE id = ?", (execution_id,))

    def list_executions(self, limit: int = 50) -> list[ExecutionRecord]:
        return self._select(ExecutionRecord, "ORDER BY started_at DESC LIMIT ?", (limit,), "executions")

    def insert_ack(self, ack: AckRecord) -> bool:
        cur = self._insert("halt_acks", ack, " ON CONFLICT (execution_id, agent) DO NOTHING")
        return bool(cur.rowcount == 1)

    def list_acks(self, execution_id: str) -> list[AckRecord]:
        return self._select(AckRecord, "WHERE execution_id = ? ORDER BY acked_at", (execution_id,), "halt_acks")

    def insert_evidence(self, evidence: EvidenceRecord) -> bool:
        cur = self._insert("evidence", evidence, " ON CONFLICT (execution_id, kind, agent) DO NOTHING")
        return bool(cur.rowcount)

    def list_evidence(self, execution_id: str) -> list[EvidenceRecord]:
        where = "WHERE execution_id = ? ORDER BY kind DESC, agent"
        return self._select(EvidenceRecord, where, (execution_id,), "evidence")

    # -- fleet budgets --------------------------------------------------------------------------------
    def budget_shares(self, scope: str, day: str, *, lock: bool = False) -> list[BudgetRecord]:
        if lock and self.dialect.for_update:
            # One row every lease locks first: leases from every replica are then one after another.
            self._one("SELECT value FROM meta WHERE key = 'budget_lock'" + self.dialect.for_update)
        where = "WHERE scope = ? AND day = ? ORDER BY agent"
        return self._select(BudgetRecord, where, (scope, day), "budget_leases")

    def put_budget_share(self, share: BudgetRecord) -> None:
        self._insert(
            "budget_leases",
            share,
            " ON CONFLICT (scope, day, agent) DO UPDATE SET agent_id = excluded.agent_id, "
            "limit_usd = excluded.limit_usd, "
            "granted_usd = excluded.granted_usd, spent_usd = excluded.spent_usd, updated_at = excluded.updated_at, "
            "refused = excluded.refused, leases = excluded.leases, seq = excluded.seq",
        )

    def list_budget_shares(self, since_day: str, limit: int = 1000) -> list[BudgetRecord]:
        where = "WHERE day >= ? ORDER BY day DESC, scope, agent LIMIT ?"
        return self._select(BudgetRecord, where, (since_day, limit), "budget_leases")

    # -- directives ---------------------------------------------------------------------------------
    def insert_directive(self, directive: DirectiveRecord) -> None:
        self._insert("directives", directive)

    def active_directives(self) -> list[DirectiveRecord]:
        return self._select(DirectiveRecord, "WHERE active = 1 ORDER BY version", (), "directives")

    def directives_changed_since(self, version: int) -> list[DirectiveRecord]:
        return self._select(
            DirectiveRecord,
            "WHERE version > ? OR lifted_version > ? ORDER BY version",
            (version, version),
            "directives",
        )

    def lift_directives(self, ids: Sequence[str], at: float, by: str, version: int) -> None:
        self._many(
            "UPDATE directives SET active = 0, lifted_at = ?, lifted_by = ?, lifted_version = ? WHERE id = ?",
            [(at, by, version, i) for i in ids],
        )

    # -- audit chain --------------------------------------------------------------------------------
    def audit_head(self, *, lock: bool = False) -> tuple[int, str] | None:
        if lock and self.dialect.for_update:
            # One row every appender locks first: appends from every replica then form one chain.
            self._one("SELECT value FROM meta WHERE key = 'audit_lock'" + self.dialect.for_update)
        row = self._one("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
        return None if row is None else (int(row[0]), str(row[1]))

    def append_audit(self, rows: Sequence[AuditRow]) -> None:
        self.changed = True  # other replicas' operator feeds hear of it
        self._many(
            "INSERT INTO audit_entries (seq, ts, kind, body, hash) VALUES (?, ?, ?, ?, ?)",
            [(r.seq, r.ts, r.kind, r.body, r.hash) for r in rows],
        )

    def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        c = checkpoint
        self.execute(
            "INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, ts = excluded.ts, signature = excluded.signature",
            (c.seq, c.hash, c.ts, c.signature),
        )

    def delete_checkpoint(self, seq: int) -> None:
        self.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (seq,))

    def list_checkpoints(self) -> list[Checkpoint]:
        rows = self.execute("SELECT seq, hash, ts, signature FROM audit_checkpoints ORDER BY seq").fetchall()
        return [Checkpoint(int(s), str(h), str(t), str(g)) for s, h, t, g in rows]

    def audit_page(self, after: int, limit: int) -> list[AuditRow]:
        rows = self.execute(
            "SELECT seq, ts, kind, body, hash FROM audit_entries WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        ).fetchall()
        return [AuditRow(int(s), str(t), str(k), bytes(b), str(h)) for s, t, k, b, h in rows]

    def iter_audit(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes, str]]:
        sql = "SELECT seq, body, hash FROM audit_entries WHERE seq >= ?"
        params: tuple[Any, ...] = (start,)
        if stop is not None:
            sql, params = sql + " AND seq < ?", (start, stop)
        cur = self.execute(sql + " ORDER BY seq", params)
        while rows := cur.fetchmany(5000):
            for seq, body, hash_ in rows:
                yield seq, body if isinstance(body, bytes) else bytes(body), hash_


@cache
def _rewrite(sql: str) -> str:
    return sql.replace("?", "%s")


TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE agents (
    name TEXT PRIMARY KEY, agent_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, frameworks TEXT NOT NULL,
    pid {int}, host TEXT NOT NULL, public_key TEXT NOT NULL, incarnation {int} NOT NULL,
    registered_at {real} NOT NULL, last_seen {real} NOT NULL, last_seq {int} NOT NULL,
    status TEXT NOT NULL, read_only_tools TEXT NOT NULL, metadata TEXT NOT NULL,
    changed {int} NOT NULL DEFAULT 0, status_at {real} NOT NULL DEFAULT 0, status_reason TEXT NOT NULL DEFAULT '',
    registered_ts {real} NOT NULL DEFAULT 0, enrolled_by TEXT, policy TEXT NOT NULL DEFAULT ''
);
CREATE INDEX agents_changed ON agents (changed);
CREATE INDEX agents_liveness ON agents (status, last_seen);
CREATE TABLE forgotten_agents (name TEXT PRIMARY KEY, changed {int} NOT NULL);
CREATE TABLE credentials (
    agent TEXT NOT NULL, label TEXT NOT NULL, fingerprint TEXT NOT NULL, kind TEXT NOT NULL,
    revoked {int} NOT NULL DEFAULT 0, revoked_at {real}, PRIMARY KEY (agent, fingerprint)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role {int} NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL, created_by TEXT NOT NULL, revoked_at {real}, grants TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE authorizations (
    id TEXT PRIMARY KEY, level {int} NOT NULL, scope TEXT NOT NULL, by_email TEXT NOT NULL,
    reason TEXT NOT NULL, token_id TEXT NOT NULL, token_name TEXT NOT NULL, role {int} NOT NULL,
    created_at {real} NOT NULL, expires_at {real} NOT NULL, status TEXT NOT NULL, closed_at {real},
    execution_id TEXT
);
CREATE INDEX authorizations_status ON authorizations (status);
CREATE TABLE executions (
    id TEXT PRIMARY KEY, authorization_id TEXT, origin TEXT NOT NULL, level {int} NOT NULL,
    scope TEXT NOT NULL, by_email TEXT NOT NULL, reason TEXT NOT NULL, token_name TEXT NOT NULL,
    started_at {real} NOT NULL, finished_at {real} NOT NULL, agents TEXT NOT NULL,
    levels_fired TEXT NOT NULL, directive_id TEXT NOT NULL, version {int} NOT NULL,
    targets TEXT NOT NULL DEFAULT '{{}}', state TEXT NOT NULL DEFAULT 'complete'
);
CREATE INDEX executions_started ON executions (started_at);
CREATE TABLE halt_acks (
    execution_id TEXT NOT NULL, agent TEXT NOT NULL, version {int} NOT NULL, acked_at {real} NOT NULL,
    time_to_halt_ms {real} NOT NULL, agent_id TEXT NOT NULL DEFAULT '', applied_at {real} NOT NULL DEFAULT 0,
    receipt TEXT NOT NULL DEFAULT '{{}}', PRIMARY KEY (execution_id, agent)
);
CREATE TABLE evidence (
    execution_id TEXT NOT NULL, kind TEXT NOT NULL, agent TEXT NOT NULL, agent_id TEXT NOT NULL,
    received_at {real} NOT NULL, document TEXT NOT NULL, PRIMARY KEY (execution_id, kind, agent)
);
CREATE TABLE directives (
    id TEXT PRIMARY KEY, execution_id TEXT NOT NULL, level {int} NOT NULL, scope TEXT NOT NULL,
    origin TEXT NOT NULL, created_at {real} NOT NULL, version {int} NOT NULL,
    active {int} NOT NULL DEFAULT 1, lifted_at {real}, lifted_by TEXT,
    by_email TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '', lifted_version {int}
);
CREATE INDEX directives_active ON directives (active);
CREATE INDEX directives_version ON directives (version);
CREATE INDEX directives_lifted ON directives (lifted_version);
CREATE TABLE audit_entries (
    seq {int} PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, body {blob} NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq {int} PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL, signature TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('state_version', '0');
INSERT INTO meta (key, value) VALUES ('registry_seq', '0');
INSERT INTO meta (key, value) VALUES ('audit_lock', '0');
"""

# Fleet budgets (schema 5 in SQLite, 4 in PostgreSQL): made by the upgrade on every database, new or old;
# then (schema 6 / 5) each share's lease count and newest sequence number.
BUDGET_TABLE = """
CREATE TABLE IF NOT EXISTS budget_leases (
    scope TEXT NOT NULL, day TEXT NOT NULL, agent TEXT NOT NULL, agent_id TEXT NOT NULL,
    limit_usd {real} NOT NULL, granted_usd {real} NOT NULL, spent_usd {real} NOT NULL,
    updated_at {real} NOT NULL, refused {int} NOT NULL DEFAULT 0, PRIMARY KEY (scope, day, agent)
);
INSERT INTO meta (key, value) SELECT 'budget_lock', '0' WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'budget_lock');
"""
BUDGET_COLUMNS = """
ALTER TABLE budget_leases ADD COLUMN {if_not_exists}leases {int} NOT NULL DEFAULT 0;
ALTER TABLE budget_leases ADD COLUMN {if_not_exists}seq {int} NOT NULL DEFAULT 0;
"""


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
