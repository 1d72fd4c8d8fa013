"""SQLite store: one file in WAL mode, schema versioned with forward migrations.

Used from one thread (the server's event loop), so no connection pool is needed.  Every
mutating act of the control plane is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import Row, Store, StoreError

JSON_COLUMNS = {"read_only_tools", "metadata", "agents", "levels_fired"}

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE agents (
        name TEXT PRIMARY KEY, agent_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, framework TEXT NOT NULL,
        pid INTEGER, host TEXT, public_key TEXT NOT NULL, incarnation INTEGER NOT NULL,
        registered_at REAL NOT NULL, last_seen REAL NOT NULL, last_seq INTEGER NOT NULL,
        status TEXT NOT NULL, read_only_tools TEXT NOT NULL, metadata TEXT NOT NULL
    );
    CREATE TABLE credentials (
        agent TEXT NOT NULL, label TEXT NOT NULL, fingerprint TEXT NOT NULL, kind TEXT NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0, revoked_at REAL, PRIMARY KEY (agent, fingerprint)
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role INTEGER NOT NULL, token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL, created_by TEXT NOT NULL, revoked_at REAL
    );
    CREATE TABLE authorizations (
        id TEXT PRIMARY KEY, level INTEGER NOT NULL, scope TEXT NOT NULL, by_email TEXT NOT NULL,
        reason TEXT NOT NULL, token_id TEXT NOT NULL, token_name TEXT NOT NULL, role INTEGER NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL, status TEXT NOT NULL, closed_at REAL,
        execution_id TEXT
    );
    CREATE INDEX authorizations_status ON authorizations (status);
    CREATE TABLE executions (
        id TEXT PRIMARY KEY, authorization_id TEXT, origin TEXT NOT NULL, level INTEGER NOT NULL,
        scope TEXT NOT NULL, by_email TEXT NOT NULL, reason TEXT NOT NULL, token_name TEXT NOT NULL,
        started_at REAL NOT NULL, finished_at REAL NOT NULL, agents TEXT NOT NULL,
        levels_fired TEXT NOT NULL, directive_id TEXT NOT NULL, version INTEGER NOT NULL
    );
    CREATE TABLE halt_acks (
        execution_id TEXT NOT NULL, agent TEXT NOT NULL, version INTEGER NOT NULL, acked_at REAL NOT NULL,
        time_to_halt_ms REAL NOT NULL, PRIMARY KEY (execution_id, agent)
    );
    CREATE TABLE directives (
        id TEXT PRIMARY KEY, execution_id TEXT NOT NULL, level INTEGER NOT NULL, scope TEXT NOT NULL,
        origin TEXT NOT NULL, created_at REAL NOT NULL, version INTEGER NOT NULL,
        active INTEGER NOT NULL DEFAULT 1, lifted_at REAL, lifted_by TEXT
    );
    CREATE INDEX directives_active ON directives (active);
    CREATE TABLE audit_entries (
        seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL, hash TEXT NOT NULL
    );
    CREATE TABLE audit_checkpoints (
        seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL, signature TEXT NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    out: Row = {}
    for (name, *_), value in zip(cursor.description, values, strict=True):
        out[name] = json.loads(value) if name in JSON_COLUMNS and isinstance(value, str) else value
    return out


def _encode(row: Row) -> Row:
    return {k: json.dumps(v) if k in JSON_COLUMNS and not isinstance(v, str) else v for k, v in row.items()}


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None
        self._db.row_factory = _row
        self._depth = 0
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a crash of the process; only a
        # power cut can lose the last ones.  FULL would cost an fsync per heartbeat.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()
        current = int(next(iter(version.values())))
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the database {self.path} has schema version {current}, newer than this m99 "
                f"understands ({SCHEMA_VERSION}); upgrade m99"
            )
        for number in range(current, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number + 1}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._db.execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._db.execute(sql, params).fetchall())

    def _insert(self, table: str, row: Row) -> None:
        data = _encode(row)
        cols = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        self._db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(data.values()))

    # meta
    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # agents
    def upsert_agent(self, row: Row) -> None:
        data = _encode(row)
        cols = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        updates = ", ".join(f"{c} = excluded.{c}" for c in data if c != "name")
        self._db.execute(
            f"INSERT INTO agents ({cols}) VALUES ({marks}) ON CONFLICT (name) DO UPDATE SET {updates}",
            tuple(data.values()),
        )

    def list_agents(self) -> list[Row]:
        return self._all("SELECT * FROM agents ORDER BY name")

    def record_heartbeat(self, name: str, seq: int, last_seen: float) -> None:
        self._db.execute("UPDATE agents SET last_seq = ?, last_seen = ? WHERE name = ?", (seq, last_seen, name))

    def set_agent_status(self, names: Sequence[str], status: str) -> None:
        self._db.executemany("UPDATE agents SET status = ? WHERE name = ?", [(status, n) for n in names])

    # credentials
    def add_credentials(self, agent: str, creds: Sequence[Row]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO credentials (agent, label, fingerprint, kind) VALUES (?, ?, ?, ?)",
            [(agent, c["label"], c["fingerprint"], c["kind"]) for c in creds],
        )

    def list_credentials(self, agent: str | None = None) -> list[Row]:
        if agent is None:
            return self._all("SELECT * FROM credentials ORDER BY agent, label")
        return self._all("SELECT * FROM credentials WHERE agent = ? ORDER BY label", (agent,))

    def set_credentials_revoked(self, agents: Sequence[str], revoked: int, at: float | None) -> int:
        # 0 live, 1 revoked (restorable), 2 revoked for good: raising only ever goes up, and a
        # restore (0) only reverses 1, never 2.
        cond = "revoked = 1" if revoked == 0 else "revoked < ?"
        params: list[tuple[Any, ...]] = [
            (revoked, at, name) if revoked == 0 else (revoked, at, name, revoked) for name in agents
        ]
        # One statement for the whole fleet (executemany sums the rowcounts): an execute in scope of
        # thousands of agents commits the kill a statement per agent sooner.
        cursor = self._db.executemany(
            f"UPDATE credentials SET revoked = ?, revoked_at = ? WHERE agent = ? AND {cond}", params
        )
        return max(0, cursor.rowcount)

    # tokens
    def insert_token(self, row: Row) -> None:
        self._insert("tokens", row)

    def token_by_hash(self, token_hash: str) -> Row | None:
        return self._one("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))

    def list_tokens(self) -> list[Row]:
        return self._all("SELECT id, name, role, created_at, created_by, revoked_at FROM tokens ORDER BY created_at")

    def revoke_token(self, token_id: str, at: float) -> bool:
        cur = self._db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, token_id))
        return cur.rowcount == 1

    # authorisations
    def insert_authorization(self, row: Row) -> None:
        self._insert("authorizations", row)

    def get_authorization(self, auth_id: str) -> Row | None:
        return self._one("SELECT * FROM authorizations WHERE id = ?", (auth_id,))

    def list_authorizations(self, status: str | None = None) -> list[Row]:
        if status is None:
            return self._all("SELECT * FROM authorizations ORDER BY created_at DESC LIMIT 200")
        return self._all("SELECT * FROM authorizations WHERE status = ? ORDER BY created_at", (status,))

    def close_authorization(
        self, auth_id: str, from_status: str, to_status: str, at: float, execution_id: str | None = None
    ) -> bool:
        cur = self._db.execute(
            "UPDATE authorizations SET status = ?, closed_at = ?, execution_id = ? WHERE id = ? AND status = ?",
            (to_status, at, execution_id, auth_id, from_status),
        )
        return cur.rowcount == 1

    # executions
    def insert_execution(self, row: Row) -> None:
        self._insert("executions", row)

    def get_execution(self, execution_id: str) -> Row | None:
        return self._one("SELECT * FROM executions WHERE id = ?", (execution_id,))

    def list_executions(self, limit: int = 50) -> list[Row]:
        return self._all("SELECT * FROM executions ORDER BY started_at DESC LIMIT ?", (limit,))

    def record_ack(self, execution_id: str, agent: str, version: int, acked_at: float, ms: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO halt_acks (execution_id, agent, version, acked_at, time_to_halt_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (execution_id, agent, version, acked_at, ms),
        )

    def list_acks(self, execution_id: str) -> list[Row]:
        return self._all("SELECT * FROM halt_acks WHERE execution_id = ? ORDER BY acked_at", (execution_id,))

    # directives
    def insert_directive(self, row: Row) -> None:
        self._insert("directives", row)

    def active_directives(self) -> list[Row]:
        return self._all("SELECT * FROM directives WHERE active = 1 ORDER BY version")

    def lift_directives(self, ids: Sequence[str], at: float, by: str) -> None:
        self._db.executemany(
            "UPDATE directives SET active = 0, lifted_at = ?, lifted_by = ? WHERE id = ?",
            [(at, by, i) for i in ids],
        )

    # audit
    def audit_head(self) -> tuple[int, str] | None:
        row = self._one("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
        return None if row is None else (int(row["seq"]), str(row["hash"]))

    def append_audit(self, rows: Sequence[tuple[int, str, str, bytes, str]]) -> None:
        self._db.executemany("INSERT INTO audit_entries (seq, ts, kind, body, hash) VALUES (?, ?, ?, ?, ?)", rows)

    def insert_checkpoint(self, seq: int, hash_: str, ts: str, signature: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)",
            (seq, hash_, ts, signature),
        )

    def delete_checkpoint(self, seq: int) -> None:
        self._db.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (seq,))

    def iter_audit(self, start: int = 0, batch: int = 10_000) -> Iterator[tuple[int, bytes, str]]:
        # A plain cursor without the dict row factory: verification reads every entry.
        cur = self._db.cursor()
        cur.row_factory = None
        cur.execute("SELECT seq, body, hash FROM audit_entries WHERE seq >= ? ORDER BY seq", (start,))
        while rows := cur.fetchmany(batch):
            yield from rows

    def audit_page(self, after: int, limit: int) -> list[Row]:
        return self._all(
            "SELECT seq, ts, kind, body, hash FROM audit_entries WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )

    def list_checkpoints(self) -> list[Row]:
        return self._all("SELECT * FROM audit_checkpoints ORDER BY seq")
