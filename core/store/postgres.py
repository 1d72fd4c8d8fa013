"""PostgreSQL store, for several ``m99 serve`` replicas sharing one database.

psycopg 3 with a connection pool.  The state version, registry sequence and audit head are rows each
writer locks (``SELECT … FOR UPDATE`` / ``UPDATE … RETURNING``), so every replica's transactions
assign them in commit order and the audit chain stays one chain.  A transaction that changed the
state sends ``NOTIFY m99_changes``; every replica LISTENs on a connection of its own and tells its
change bus, and tells it again after that connection comes back, so a replica that missed a
notification catches up by version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .base import ChangeBus, Store, StoreError
from .sql import BUDGET_COLUMNS, BUDGET_TABLE, POSTGRES, TABLES, SqlTx, statements

__all__ = ["PostgresStore"]

log = logging.getLogger("m99.store")

SCHEMA_VERSION = 5
CHANNEL = "m99_changes"
_MIGRATION_LOCK = 990_001  # pg_advisory_xact_lock key: one replica migrates at a time
_EVIDENCE_TABLE = """CREATE TABLE evidence (
    execution_id TEXT NOT NULL, kind TEXT NOT NULL, agent TEXT NOT NULL, agent_id TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, document TEXT NOT NULL, PRIMARY KEY (execution_id, kind, agent)
);
"""
PG_TABLES = TABLES.format(int="BIGINT", real="DOUBLE PRECISION", blob="BYTEA")
assert _EVIDENCE_TABLE in PG_TABLES, "the evidence table's migration must be the table as sql.py makes it"
# MIGRATIONS[n] brings a database at schema version n to n + 1.
MIGRATIONS = [
    PG_TABLES.replace(_EVIDENCE_TABLE, ""),
    # 1 -> 2: the policy (KILLSWITCH.md content hash) each agent runs under
    "ALTER TABLE agents ADD COLUMN IF NOT EXISTS policy TEXT NOT NULL DEFAULT '';",
    # 2 -> 3: evidence snapshots
    _EVIDENCE_TABLE.replace("CREATE TABLE evidence", "CREATE TABLE IF NOT EXISTS evidence"),
    # 3 -> 4: fleet budgets (cost_limit_daily_scope)
    BUDGET_TABLE.format(int="BIGINT", real="DOUBLE PRECISION"),
    # 4 -> 5: a fleet budget share's lease count and newest sequence number
    BUDGET_COLUMNS.format(int="BIGINT", if_not_exists="IF NOT EXISTS "),
]


def _imports() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise StoreError(
            f"the PostgreSQL store needs psycopg ({exc.name} is missing): pip install 'm99[postgres]'"
        ) from None
    return psycopg, psycopg_pool


def redacted(url: str) -> str:
    """``url`` without its password, for logs and ``location``."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.partition("://")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{tail}"


class PostgresStore(Store):
    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 12, listen: bool = True) -> None:
        psycopg, psycopg_pool = _imports()
        self._psycopg = psycopg
        self.url = url
        self.location = redacted(url)
        self.changes = ChangeBus()
        self._local = threading.local()
        self._closed = threading.Event()
        try:
            self.pool = psycopg_pool.ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                open=True,
                timeout=10,
                check=psycopg_pool.ConnectionPool.check_connection,
                kwargs={"autocommit": False, "connect_timeout": 5},
                name="m99",
            )
            self.pool.wait(timeout=10)
            self._migrate()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self.close()
            raise StoreError(f"cannot open the PostgreSQL database {self.location}: {exc}") from None
        self._listener: threading.Thread | None = None
        if listen:
            self._listener = threading.Thread(target=self._listen, name="m99-pg-listen", daemon=True)
            self._listener.start()

    def _migrate(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS m99_schema (version BIGINT NOT NULL)")
            row = conn.execute("SELECT version FROM m99_schema").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the database {self.location} has schema version {current}, newer than this m99 "
                    f"understands ({SCHEMA_VERSION}); upgrade m99"
                )
            for number in range(current, SCHEMA_VERSION):
                for statement in statements(MIGRATIONS[number]):
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO m99_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                conn.execute("UPDATE m99_schema SET version = %s", (SCHEMA_VERSION,))

    @contextmanager
    def _tx(self, *, read_only: bool) -> Iterator[SqlTx]:
        local = self._local
        if getattr(local, "tx", None) is not None:  # nested: join the outer transaction
            yield local.tx
            return
        if self._closed.is_set():
            raise StoreError(f"the store {self.location} is closed")
        psycopg = self._psycopg
        tx: SqlTx | None = None
        try:
            with self.pool.connection() as conn:
                with conn.transaction():
                    if read_only:
                        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    tx = SqlTx(conn.cursor(), POSTGRES)
                    local.tx = tx
                    try:
                        yield tx
                        if tx.changed:
                            conn.execute(f"NOTIFY {CHANNEL}")
                    finally:
                        local.tx = None
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL {self.location}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise StoreError(f"PostgreSQL {self.location}: {exc}") from exc
            raise
        if tx is not None and tx.changed:
            self.changes.notify()

    def transaction(self) -> Any:
        return self._tx(read_only=False)

    def snapshot(self) -> Any:
        return self._tx(read_only=True)

    def _listen(self) -> None:
        """Hear other replicas' commits; after a lost connection, tell the bus once it is back."""
        psycopg = self._psycopg
        backoff = 0.2
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.2
                    self.changes.notify()  # whatever happened while we were not listening
                    while not self._closed.is_set():
                        # Each notification is told at once (the subscriber catches up by version, so a
                        # burst read in one pass costs one catch-up per notification at most).
                        for _ in conn.notifies(timeout=1.0):
                            self.changes.notify()
                            if self._closed.is_set():
                                break
            except psycopg.Error as exc:
                if self._closed.is_set():
                    return
                log.warning("m99: PostgreSQL notifications lost (%s); reconnecting", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def close(self) -> None:
        self._closed.set()
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close(timeout=5)
        listener = getattr(self, "_listener", None)
        if listener is not None:
            listener.join(timeout=3)

    def health(self) -> dict[str, Any]:
        stats = self.pool.get_stats() if hasattr(self, "pool") else {}
        return {"kind": "postgresql", "location": self.location, "pool": stats}
