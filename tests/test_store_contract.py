"""The store contract (m99.store.base), run against every store: SQLite, and PostgreSQL when the tests
are given one.  What the control plane relies on: typed records in and out, counters assigned in commit
order with no gaps or duplicates under concurrent writers, locked rows that a second writer sees only
once committed, one audit chain from many writers, and a change bus."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from m99 import audit
from m99.crypto import SigningKey
from m99.store import Store, open_store
from m99.store.records import (
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

from .pg import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "m99.db")
        return
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


def agent(name: str, changed: int, **kw: object) -> AgentRecord:
    fields: dict = {
        "name": name,
        "agent_id": f"agt_{name}",
        "kind": "worker",
        "frameworks": ("langchain",),
        "pid": 42,
        "host": "h",
        "public_key": "pk",
        "incarnation": 1,
        "registered_at": 1.0,
        "last_seen": 1.0,
        "last_seq": 0,
        "status": "active",
        "read_only_tools": ("search",),
        "metadata": {"team": "blue"},
        "changed": changed,
        **kw,
    }
    return AgentRecord(**fields)


def test_records_come_back_as_they_went_in(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_agent(agent("a", tx.next_registry_seq()))
        tx.add_credentials([CredentialRecord("a", "KEY", "hmac-sha256:" + "0" * 64, "env")])
        tx.insert_token(TokenRecord("tok_1", "admin", 3, "h" * 64, 1.0, "first start", None, {"rebind": True}))
        tx.insert_authorization(
            AuthorizationRecord("auth_1", 3, "global", "a@b.c", "r", "tok_1", "admin", 3, 1.0, 9e9, "armed")
        )
        version = tx.next_version()
        tx.insert_directive(DirectiveRecord("dir_1", "exe_1", 3, "agent:a", "execute", 1.0, version, "a@b.c", "r"))
        tx.insert_execution(
            ExecutionRecord(
                "exe_1",
                "auth_1",
                "execute",
                3,
                "agent:a",
                "a@b.c",
                "r",
                "admin",
                1.0,
                2.0,
                ("a",),
                ("L1",),
                "dir_1",
                version,
                {"a": "agt_a"},
            )
        )
        assert tx.insert_ack(AckRecord("exe_1", "a", "agt_a", version, 3.0, 2.5, 1.5, {"level": 3}))
        assert not tx.insert_ack(AckRecord("exe_1", "a", "agt_a", version, 4.0, 2.5, 9.9))  # once only
    with store.snapshot() as tx:
        got = tx.get_agent("a")
        assert got == agent("a", 1)
        assert tx.get_agent_by_id("agt_a") == got
        assert tx.list_credentials("a")[0].fingerprint.startswith("hmac-sha256:")
        assert tx.token_by_hash("h" * 64).grants == {"rebind": True}  # type: ignore[union-attr]
        assert tx.get_execution("exe_1").targets == {"a": "agt_a"}  # type: ignore[union-attr]
        assert tx.list_acks("exe_1")[0].receipt == {"level": 3}
        assert tx.active_directives()[0].active is True


def test_a_rolled_back_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.next_version()
        tx.put_agent(agent("ghost", tx.next_registry_seq()))
        raise RuntimeError("half-way")
    with store.snapshot() as tx:
        assert tx.get_agent("ghost") is None and tx.version() == 0 and tx.registry_seq() == 0


def test_versions_are_assigned_in_commit_order_with_no_gaps_under_concurrent_writers(url: str) -> None:
    stores = [open_store(url) for _ in range(3)]
    taken: list[int] = []
    lock = threading.Lock()

    def writer(s: Store) -> None:
        for _ in range(30):
            with s.transaction() as tx:
                v = tx.next_version()
                tx.insert_directive(DirectiveRecord(f"dir_{v}", "exe", 1, "global", "execute", time.time(), v))
            with lock:
                taken.append(v)

    threads = [threading.Thread(target=writer, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(taken) == list(range(1, 181))
    with stores[0].snapshot() as tx:
        assert tx.version() == 180 and len(tx.directives_changed_since(170)) == 10
    for s in stores:
        s.close()


def test_many_writers_append_one_audit_chain(url: str) -> None:
    key = SigningKey.generate()
    stores = [open_store(url) for _ in range(3)]

    def append(s: Store, n: int) -> None:
        for i in range(n):
            with s.transaction() as tx:
                head = tx.audit_head(lock=True)
                seq, prev = head if head else (-1, audit.GENESIS_PREV)
                kind = "genesis" if seq == -1 else "test"
                body, digest = audit.make_entry(prev, seq + 1, audit.utc_now_iso(), kind, {"by": "t"}, {"i": i})
                tx.append_audit([AuditRow(seq + 1, "ts", kind, body, digest)])
                tx.insert_checkpoint(audit.sign_checkpoint(key, seq + 1, digest, "ts"))

    append(stores[0], 1)  # the genesis entry
    threads = [threading.Thread(target=append, args=(s, 25)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with stores[0].snapshot() as tx:
        rows = list(tx.iter_audit())
        checkpoints = tx.list_checkpoints()
    assert [r[0] for r in rows] == list(range(151))
    result = audit.verify_entries(rows, checkpoints=checkpoints, public_key_b64=key.public_b64)
    assert result.valid, result.reason
    for s in stores:
        s.close()


def test_a_locked_row_is_judged_once_by_two_writers(url: str) -> None:
    one, two = open_store(url), open_store(url)
    with one.transaction() as tx:
        tx.insert_authorization(
            AuthorizationRecord("auth_x", 3, "global", "a@b.c", "r", "t", "admin", 3, 1.0, 9e9, "armed")
        )
    wins: list[bool] = []

    def execute(s: Store) -> None:
        with s.transaction() as tx:
            time.sleep(0.05)
            wins.append(tx.close_authorization("auth_x", "armed", "executed", time.time(), "exe"))

    threads = [threading.Thread(target=execute, args=(s,)) for s in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(wins) == [False, True]
    one.close()
    two.close()


def test_liveness_keeps_the_newest_and_agent_changes_are_found_by_sequence(store: Store) -> None:
    with store.transaction() as tx:
        for name in ("a", "b"):
            tx.put_agent(agent(name, tx.next_registry_seq()))
        tx.record_liveness([("a", 5, 10.0), ("b", 3, 20.0)])
        tx.record_liveness([("a", 4, 5.0)])  # an older flush arriving late changes nothing
    with store.snapshot() as tx:
        a = tx.get_agent("a")
        assert a is not None and (a.last_seq, a.last_seen) == (5, 10.0)
        assert [n for n, _, _ in tx.liveness_since(15.0)] == ["b"]
        assert tx.silent_agents(15.0) == ["a"]
        seq = tx.registry_seq()
    with store.transaction() as tx:
        tx.set_agent_status(["b"], "stopped", "deregistered", 30.0, tx.next_registry_seq())
        tx.delete_agents(["a"], tx.next_registry_seq())
    with store.snapshot() as tx:
        assert [r.name for r in tx.agents_changed_since(seq)] == ["b"]
        assert tx.forgotten_since(seq) == ["a"]
        assert tx.stale_agents("stopped", 31.0) == ["b"]


def test_credentials_revoke_up_and_restore_only_what_is_restorable(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_agent(agent("a", tx.next_registry_seq()))
        tx.add_credentials([CredentialRecord("a", "K1", "f1", "env"), CredentialRecord("a", "K2", "f2", "env")])
        assert tx.set_credentials_revoked(["a"], 1, 1.0) == 2
        assert tx.set_credentials_revoked(["a"], 2, 2.0) == 2
        assert tx.set_credentials_revoked(["a"], 0, 3.0) == 0  # for good means for good
        assert {c.revoked for c in tx.list_credentials("a")} == {2}


def test_the_change_bus_tells_subscribers_after_a_commit(url: str) -> None:
    writer, reader = open_store(url), open_store(url)
    here, there = threading.Event(), threading.Event()
    writer.changes.subscribe(here.set)
    reader.changes.subscribe(there.set)
    time.sleep(0.5)  # the reader's listener is up
    here.clear()
    there.clear()
    with writer.transaction() as tx:
        tx.put_agent(agent("quiet", 0))  # no counter taken: nothing to tell
    assert not here.wait(0.3)
    with writer.transaction() as tx:
        tx.next_version()
    assert here.wait(5)  # in this process, after the commit
    if url.startswith("postgresql"):
        assert there.wait(5)  # another replica hears it too (NOTIFY); SQLite is one process
    writer.close()
    reader.close()


def test_an_agent_keeps_the_policy_it_runs_under(store: Store) -> None:
    digest = "sha256:" + "ab" * 32
    with store.transaction() as tx:
        tx.put_agent(agent("governed", tx.next_registry_seq(), policy=digest))
        tx.put_agent(agent("free", tx.next_registry_seq()))
    with store.snapshot() as tx:
        assert tx.get_agent("governed").policy == digest  # type: ignore[union-attr]
        assert tx.get_agent("free").policy == ""  # type: ignore[union-attr]


def test_a_database_from_before_policies_is_upgraded_in_place(url: str) -> None:
    """Made by the previous schema (no ``agents.policy``): opening it adds the column, rows kept."""
    s = open_store(url)
    with s.transaction() as tx:
        tx.put_agent(agent("old", tx.next_registry_seq()))
    s.close()
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE agents DROP COLUMN policy")
            conn.execute("UPDATE m99_schema SET version = 1")
    else:
        import sqlite3

        conn = sqlite3.connect(url)
        conn.execute("ALTER TABLE agents DROP COLUMN policy")
        conn.execute("PRAGMA user_version=2")
        conn.commit()
        conn.close()
    s = open_store(url)
    try:
        with s.transaction() as tx:
            assert tx.get_agent("old").policy == ""  # type: ignore[union-attr]
            tx.put_agent(agent("new", tx.next_registry_seq(), policy="sha256:" + "cd" * 32))
        with s.snapshot() as tx:
            assert tx.get_agent("new").policy == "sha256:" + "cd" * 32  # type: ignore[union-attr]
    finally:
        s.close()


def test_evidence_is_kept_once_per_signer_and_execution(store: Store) -> None:
    signed = {"document": {"type": "server.snapshot", "execution_id": "exe_e", "note": "ünïcode"}, "signature": "s"}
    with store.transaction() as tx:
        assert tx.insert_evidence(EvidenceRecord("exe_e", "server", "", "", 1.0, signed))
        assert tx.insert_evidence(EvidenceRecord("exe_e", "agent", "b", "agt_b", 2.0, {"evidence": {"x": 1}}))
        assert tx.insert_evidence(EvidenceRecord("exe_e", "agent", "a", "agt_a", 3.0, {"evidence": {"x": 2}}))
        assert not tx.insert_evidence(EvidenceRecord("exe_e", "agent", "a", "agt_a", 4.0, {"evidence": {"x": 3}}))
        assert tx.insert_evidence(EvidenceRecord("exe_other", "server", "", "", 5.0, {}))
    with store.snapshot() as tx:
        kept = tx.list_evidence("exe_e")
    assert [(e.kind, e.agent) for e in kept] == [("server", ""), ("agent", "a"), ("agent", "b")]
    assert kept[0].document == signed and kept[1].document == {"evidence": {"x": 2}}


def test_a_database_of_the_previous_schema_is_brought_forward(tmp_path: Path) -> None:
    import sqlite3

    from m99.store.sql import statements
    from m99.store.sqlite import SCHEMA_VERSION, SQLITE_TABLES

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in statements(SQLITE_TABLES):
        if "CREATE TABLE evidence" not in statement and "budget_" not in statement:
            conn.execute(statement)
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    store = open_store(str(path))
    try:
        with store.transaction() as tx:
            assert tx.insert_evidence(EvidenceRecord("exe_1", "server", "", "", 1.0, {"ok": True}))
            tx.put_budget_share(BudgetRecord("global", "2026-03-10", "a", "agt_a", 5.0, 0.25, 0.0, 1.0))
            assert [b.agent for b in tx.budget_shares("global", "2026-03-10", lock=True)] == ["a"]
    finally:
        store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6


def test_a_database_with_the_first_fleet_budget_table_gains_its_new_columns(tmp_path: Path) -> None:
    """Schema 5 made ``budget_leases`` without the lease count and sequence: opening it adds them."""
    import sqlite3

    from m99.store.sql import statements
    from m99.store.sqlite import SQLITE_TABLES

    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path)
    for statement in statements(SQLITE_TABLES):
        if not statement.startswith("ALTER TABLE budget_leases"):
            conn.execute(statement)
    conn.execute("INSERT INTO budget_leases VALUES ('global', '2026-03-10', 'a', 'agt_a', 5.0, 0.25, 0.0, 1.0, 0)")
    conn.execute("PRAGMA user_version=5")
    conn.commit()
    conn.close()
    store = open_store(str(path))
    try:
        with store.transaction() as tx:
            (old,) = tx.budget_shares("global", "2026-03-10", lock=True)
            assert (old.granted_usd, old.leases, old.seq) == (0.25, 0, 0)
            old.seq, old.leases = 7, 1
            tx.put_budget_share(old)
        with store.snapshot() as tx:
            assert tx.budget_shares("global", "2026-03-10")[0].seq == 7
    finally:
        store.close()


def test_postgres_migrations_add_evidence_to_a_first_schema_database() -> None:
    import psycopg

    from m99.store.postgres import MIGRATIONS, SCHEMA_VERSION
    from m99.store.sql import statements

    assert len(MIGRATIONS) == SCHEMA_VERSION == 5
    assert "CREATE TABLE evidence" not in MIGRATIONS[0] and "evidence" in MIGRATIONS[2]
    assert "budget_leases" not in MIGRATIONS[0] and "budget_leases" in MIGRATIONS[3]
    assert "ADD COLUMN IF NOT EXISTS seq" in MIGRATIONS[4]
    with fresh_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:  # a database m99 made before evidence was kept
            for statement in statements(MIGRATIONS[0]):
                conn.execute(statement)
            conn.execute("CREATE TABLE m99_schema (version BIGINT NOT NULL)")
            conn.execute("INSERT INTO m99_schema (version) VALUES (1)")
        store = open_store(dsn)
        try:
            with store.transaction() as tx:
                assert tx.insert_evidence(EvidenceRecord("exe_1", "server", "", "", 1.0, {"ok": True}))
                tx.put_budget_share(BudgetRecord("global", "2026-03-10", "a", "agt_a", 5.0, 0.25, 0.0, 1.0))
                assert [b.agent for b in tx.budget_shares("global", "2026-03-10", lock=True)] == ["a"]
        finally:
            store.close()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT version FROM m99_schema").fetchone() == (5,)


def test_budget_shares_are_one_row_per_agent_and_day_and_replaced_in_place(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_budget_share(BudgetRecord("class:w", "2026-03-10", "b", "agt_b1", 5.0, 0.5, 0.1, 1.0))
        tx.put_budget_share(BudgetRecord("class:w", "2026-03-10", "a", "agt_a", 5.0, 0.25, 0.0, 2.0))
        tx.put_budget_share(BudgetRecord("class:w", "2026-03-11", "a", "agt_a", 5.0, 1.0, 0.0, 3.0))
        tx.put_budget_share(BudgetRecord("global", "2026-03-10", "a", "agt_a", 9.0, 2.0, 0.0, 4.0))
    with store.transaction() as tx:  # a restart of b (a new registration) replaces its row
        tx.put_budget_share(BudgetRecord("class:w", "2026-03-10", "b", "agt_b2", 5.0, 0.75, 0.3, 5.0, refused=2))
    with store.snapshot() as tx:
        shares = tx.budget_shares("class:w", "2026-03-10")
        assert [(b.agent, b.agent_id, b.granted_usd, b.spent_usd, b.refused) for b in shares] == [
            ("a", "agt_a", 0.25, 0.0, 0),
            ("b", "agt_b2", 0.75, 0.3, 2),
        ]
        assert [(b.day, b.scope) for b in tx.list_budget_shares("2026-03-11")] == [("2026-03-11", "class:w")]
        assert len(tx.list_budget_shares("2026-03-01")) == 4


def test_two_replicas_leasing_at_once_never_grant_past_the_limit(url: str) -> None:
    """The lease's read-decide-write, from two stores (replicas) on many threads: the lock serialises it."""
    import threading

    stores = [open_store(url), open_store(url)]
    limit, chunk = 1.0, 0.1

    def lease(store: Store, name: str) -> None:
        for _ in range(10):
            with store.transaction() as tx:
                shares = tx.budget_shares("global", "2026-03-10", lock=True)
                used = sum(max(b.granted_usd, b.spent_usd) for b in shares)
                mine = next((b for b in shares if b.agent == name), None)
                mine = mine or BudgetRecord("global", "2026-03-10", name, "agt_" + name, limit, 0.0, 0.0, 0.0)
                mine.granted_usd += max(0.0, min(chunk, limit - used))
                tx.put_budget_share(mine)

    try:
        threads = [threading.Thread(target=lease, args=(stores[i % 2], f"agent{i}")) for i in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        with stores[0].snapshot() as tx:
            granted = sum(b.granted_usd for b in tx.budget_shares("global", "2026-03-10"))
        assert granted == pytest.approx(limit)
    finally:
        for s in stores:
            s.close()
