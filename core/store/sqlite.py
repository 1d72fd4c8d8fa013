"""SQLite store: one file in WAL mode, the embedded default.

Each thread has its own connection; write transactions are ``BEGIN IMMEDIATE`` and also serialised
by a lock in the process (another process, such as ``m99 token recover``, waits on SQLite's own lock),
so the state version, the registry sequence and the audit head are assigned in commit order.  The
schema is versioned (``PRAGMA user_version``) with forward migrations.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import audit
from ..audit import Checkpoint, VerifyResult
from .base import ChangeBus, Store, StoreError
from .sql import BUDGET_COLUMNS, BUDGET_TABLE, SQLITE, TABLES, SqlTx, statements

__all__ = ["SQLiteStore", "verify_sqlite"]

SCHEMA_VERSION = 6

# How to bring a database of each earlier schema version forward (1: the first released one; 2: before
# agents' policies were recorded; 3: before evidence was kept; 4: before fleet budgets;
# 5: before their lease counts and sequence numbers).
UPGRADES: dict[int, str] = {
    1: """
    ALTER TABLE agents ADD COLUMN frameworks TEXT NOT NULL DEFAULT '["custom"]';
    UPDATE agents SET frameworks = json_array(
        CASE WHEN framework IN ('', 'none', 'mixed') THEN 'custom' ELSE framework END);
    ALTER TABLE agents DROP COLUMN framework;
    ALTER TABLE agents ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN status_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN status_reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN registered_ts REAL NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN enrolled_by TEXT;
    CREATE INDEX agents_changed ON agents (changed);
    CREATE INDEX agents_liveness ON agents (status, last_seen);
    ALTER TABLE tokens ADD COLUMN grants TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE executions ADD COLUMN targets TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE executions ADD COLUMN state TEXT NOT NULL DEFAULT 'complete';
    CREATE INDEX executions_started ON executions (started_at);
    ALTER TABLE halt_acks ADD COLUMN agent_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE halt_acks ADD COLUMN applied_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE halt_acks ADD COLUMN receipt TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE directives ADD COLUMN by_email TEXT NOT NULL DEFAULT '';
    ALTER TABLE directives ADD COLUMN reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE directives ADD COLUMN lifted_version INTEGER;
    CREATE INDEX directives_version ON directives (version);
    CREATE INDEX directives_lifted ON directives (lifted_version);
    CREATE TABLE forgotten_agents (name TEXT PRIMARY KEY, changed INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta (key, value) VALUES ('registry_seq', '0');
    INSERT OR IGNORE INTO meta (key, value) VALUES ('audit_lock', '0');
    """,
    2: """
    ALTER TABLE agents ADD COLUMN policy TEXT NOT NULL DEFAULT '';
    """,
    3: """
    CREATE TABLE IF NOT EXISTS evidence (
        execution_id TEXT NOT NULL, kind TEXT NOT NULL, agent TEXT NOT NULL, agent_id TEXT NOT NULL,
        received_at REAL NOT NULL, document TEXT NOT NULL, PRIMARY KEY (execution_id, kind, agent)
    );
    """,
    4: BUDGET_TABLE.format(int="INTEGER", real="REAL"),
    5: BUDGET_COLUMNS.format(int="INTEGER", if_not_exists=""),
}

SQLITE_TABLES = TABLES.format(int="INTEGER", real="REAL", blob="BLOB") + UPGRADES[4] + UPGRADES[5]


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.changes = ChangeBus()
        self._local = threading.local()
        self._write = threading.RLock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._migrate(self._conn())
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError(f"the database {self.path} is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a crash of the process; only a power cut
            # can lose the last ones.  FULL would cost an fsync per group commit of heartbeats.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
            self._local.depth = 0
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the database {self.path} has schema version {current}, newer than this m99 "
                f"understands ({SCHEMA_VERSION}); upgrade m99"
            )
        if current == SCHEMA_VERSION:
            return
        with self._write:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = int(conn.execute("PRAGMA user_version").fetchone()[0])  # another process may have
                script = SQLITE_TABLES if current == 0 else "".join(UPGRADES[v] for v in range(current, SCHEMA_VERSION))
                if current < SCHEMA_VERSION:
                    for statement in statements(script):
                        try:
                            conn.execute(statement)
                        except sqlite3.OperationalError as exc:  # SQLite has no ADD COLUMN IF NOT EXISTS
                            if "ADD COLUMN" not in statement or "duplicate column" not in str(exc):
                                raise
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        conn = self._conn()
        local = self._local
        if local.depth:
            local.depth += 1
            try:
                yield local.tx
            finally:
                local.depth -= 1
            return
        with self._write:
            tx = SqlTx(conn.cursor(), SQLITE)
            conn.execute("BEGIN IMMEDIATE")
            local.depth, local.tx = 1, tx
            try:
                yield tx
            except BaseException:
                local.depth, local.tx = 0, None
                conn.execute("ROLLBACK")
                raise
            local.depth, local.tx = 0, None
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from exc
        if tx.changed:
            self.changes.notify()

    @contextmanager
    def snapshot(self) -> Iterator[SqlTx]:
        conn = self._conn()
        if self._local.depth:  # inside a transaction: read what it sees
            yield self._local.tx
            return
        conn.execute("BEGIN")
        try:
            yield SqlTx(conn.cursor(), SQLITE)
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()


class _Positional:
    """The audit table of a database file read by position, for ``audit.verify_walk``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def row_at(self, position: int) -> tuple[Any, Any, Any] | None:
        sql = "SELECT seq, body, hash FROM audit_entries ORDER BY seq LIMIT 1 OFFSET ?"
        row: tuple[Any, Any, Any] | None = self.conn.execute(sql, (position,)).fetchone()
        return row

    def first_misnumbered(self, count: int) -> int | None:
        # Two subqueries: SQLite answers a lone min() or max() from the index, but both together by a scan.
        bounds = "SELECT (SELECT min(seq) FROM audit_entries), (SELECT max(seq) FROM audit_entries)"
        lo, hi = self.conn.execute(bounds).fetchone()
        # seq is the table's INTEGER PRIMARY KEY, so min 0 and max count-1 over count rows means 0..count-1.
        if count == 0 or (lo, hi) == (0, count - 1):
            return None
        for position, (seq,) in enumerate(self.conn.execute("SELECT seq FROM audit_entries ORDER BY seq")):
            if seq != position:
                return position
        return count


def verify_sqlite(
    db_path: Path | str,
    *,
    head_file: Path | str | None = None,
    public_key_b64: str | None = None,
    require_checkpoint: bool = True,
    anchors: list[Checkpoint] | None = None,
) -> VerifyResult:
    """Verify the chain in an M99 SQLite database, opened read-only, plus its head file and ``anchors``.

    ``public_key_b64`` pins the server key: a different key in the database or head file is a failure.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no audit database at {db_path}")
    head_path = Path(head_file) if head_file is not None else db_path.parent / audit.HEAD_FILE_NAME
    checkpoints: list[Checkpoint] = list(anchors or ())
    head_key: str | None = None
    # Read the head file before the database: the server writes it after committing, so every
    # entry it covers is already in the snapshot read below (no false truncation on a live server).
    if head_path.exists():
        try:
            head_cp, head_key = audit.read_head_file(head_path)
        except (OSError, ValueError) as exc:
            return audit.failed(f"head file {head_path} is unreadable: {exc}")
        checkpoints.append(head_cp)
    elif head_file is not None:
        return audit.failed(f"head file {head_path} not found")

    conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot for meta, checkpoints and entries
        row = conn.execute("SELECT value FROM meta WHERE key = 'server_public_key'").fetchone()
        meta_key = row[0] if row and isinstance(row[0], str) else None
        for cp_row in conn.execute("SELECT seq, hash, ts, signature FROM audit_checkpoints"):
            try:
                checkpoints.append(
                    Checkpoint.from_dict(dict(zip(("seq", "hash", "ts", "signature"), cp_row, strict=True)))
                )
            except ValueError as exc:
                return audit.failed(f"checkpoint row {cp_row[0]!r} is malformed: {exc}")
        key, problem = audit.resolve_key(public_key_b64, [("database", meta_key), ("head file", head_key)])
        if problem:
            return audit.failed(problem)
        # Stepping the cursor directly beat fetchmany batches here: no list per batch to build and free.
        rows = conn.execute("SELECT body, hash FROM audit_entries ORDER BY seq")
        return audit.verify_walk(rows, checkpoints, key, require_checkpoint, _Positional(conn))
    except sqlite3.DatabaseError as exc:
        return audit.failed(f"cannot read the audit database: {exc}")
    finally:
        conn.close()
