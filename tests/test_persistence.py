"""Everything survives a crash of `m99 serve` (kill -9), and tampering with the audit chain
in the database is detected: edit, delete, reorder, truncate."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from m99.link import ControlLink

from .servers import ServeProcess


def _arm_execute(server: ServeProcess, *args: str) -> str:
    out = server.cli("arm", "--by", "admin@example.com", "--reason", "persist", *args, check=True)
    auth = re.search(r"armed: (auth_\w+)", out.stdout)
    assert auth
    server.cli("execute", "--auth", auth.group(1), "--force", check=True)
    return auth.group(1)


def test_state_and_chain_survive_kill_9(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data").start()
    link = ControlLink(server.url)
    link.register(
        "survivor",
        "autonomous",
        credentials=[{"label": "k", "fingerprint": "sha256:" + "ef" * 32, "kind": "env"}],
    )
    link.heartbeat()
    used = _arm_execute(server, "--scope", "agent:survivor")
    pending = re.search(
        r"armed: (auth_\w+)",
        server.cli("arm", "--by", "a@example.com", "--reason", "later", check=True).stdout,
    )
    assert pending
    before = server.cli("audit", "verify", "--json", check=True).stdout
    server.kill()  # SIGKILL: no clean shutdown

    server.start()
    with server.api() as api:
        agents = {a["name"]: a for a in api.get("/api/agents").json()}
        assert agents["survivor"]["level"] == 3
        assert api.get("/api/agents/survivor").json()["credentials"][0]["revoked"] == "revoked"
        assert api.get(f"/api/authorizations/{used}").json()["status"] == "executed"
        assert api.get(f"/api/authorizations/{pending.group(1)}").json()["status"] == "armed"
        verify = api.get("/api/audit/verify").json()
    assert verify["valid"] and verify["entries"] >= 8 and f'"head_seq": {verify["head_seq"]}' in before
    # The agent's identity and sequence survive too: a replay of an old sequence is refused.
    link._seq = 0
    try:
        link.heartbeat()
        raise AssertionError("a replayed sequence was accepted after restart")
    except Exception as exc:
        assert "replayed" in str(exc)
    # The old token still works, the same single-use authorisation still cannot be reused.
    again = server.cli("execute", "--auth", used, "--force")
    assert again.returncode == 8 and "single-use" in again.stderr
    server.kill()


def _tamper(tmp_path: Path, script: str) -> tuple[int, str]:
    server = ServeProcess(tmp_path / "data").start()
    link = ControlLink(server.url)
    link.register("a")
    for i in range(3):
        _arm_execute(server, "--scope", "agent:a")
        server.cli("restore", "--scope", "agent:a", "--by", "o@example.com", "--reason", f"r{i}", check=True)
    assert server.cli("audit", "verify", check=True).returncode == 0
    server.kill()
    db = server.data_dir / "m99.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(script)
    offline = server.cli("audit", "verify", "--db", str(db))
    server.start()
    online = server.cli("audit", "verify")
    server.kill()
    assert offline.returncode == online.returncode == 9, (offline.stdout, offline.stderr)
    return offline.returncode, offline.stderr + online.stderr


def test_edit_is_detected(tmp_path: Path) -> None:
    _, err = _tamper(tmp_path, "UPDATE audit_entries SET body = replace(body, 'persist', 'innocent') WHERE seq = 5")
    assert "entry 5" in err or "at entry 5" in err


def test_delete_is_detected(tmp_path: Path) -> None:
    _, err = _tamper(tmp_path, "DELETE FROM audit_entries WHERE seq = 7")
    assert "7" in err


def test_reorder_is_detected(tmp_path: Path) -> None:
    _, err = _tamper(
        tmp_path,
        "UPDATE audit_entries SET seq = -1 WHERE seq = 6;"
        "UPDATE audit_entries SET seq = 6 WHERE seq = 9;"
        "UPDATE audit_entries SET seq = 9 WHERE seq = -1;",
    )
    assert "INVALID" in err


def test_truncation_is_detected(tmp_path: Path) -> None:
    db_entries = "DELETE FROM audit_entries WHERE seq > (SELECT max(seq) - 4 FROM audit_entries)"
    _, err = _tamper(tmp_path, db_entries)
    assert "checkpoint" in err or "truncat" in err or "deleted" in err


def test_truncation_with_checkpoints_removed_is_detected(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data").start()
    ControlLink(server.url).register("a")
    _arm_execute(server)
    server.kill()
    db = server.data_dir / "m99.db"
    with sqlite3.connect(db) as conn:
        cut = conn.execute("SELECT max(seq) - 3 FROM audit_entries").fetchone()[0]
        conn.execute("DELETE FROM audit_entries WHERE seq > ?", (cut,))
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (cut,))
    out = server.cli("audit", "verify", "--db", str(db))
    assert out.returncode == 9, out.stdout + out.stderr  # the head file outside the database catches it


def test_server_keeps_checkpoints_sparse_and_truncation_still_shows(tmp_path: Path) -> None:
    # Each kept checkpoint costs a signature check when verifying; one a transaction made a
    # server's own chain verify at under 10,000 entries/s.
    from m99.server import build
    from m99.store.sqlite import verify_sqlite

    cp = build(tmp_path / "d")
    for i in range(2500):
        cp.ledger.record("test.event", {"by": "a@example.com"}, {"n": i})
    with cp.store.snapshot() as tx:
        assert len(tx.list_checkpoints()) <= 2500 // 1000 + 2
    cp.close()
    db = tmp_path / "d" / "m99.db"
    assert verify_sqlite(db).valid
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq > 2495")  # after the last milestone
    assert not verify_sqlite(db).valid


def test_an_anchor_kept_elsewhere_catches_truncation_that_nothing_else_can(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data").start()
    ControlLink(server.url).register("a")
    head = server.data_dir / "audit-head.json"
    earlier = head.read_text()  # what an attacker with the data directory can keep a copy of
    earlier_seq = json.loads(earlier)["seq"]
    _arm_execute(server)  # ... the record they later want gone
    anchor = tmp_path / "elsewhere" / "anchor.json"
    anchor.parent.mkdir()
    assert server.cli("audit", "anchor", "-o", str(anchor)).returncode == 0
    public_key = json.loads(anchor.read_text())["public_key"]
    server.kill()
    db = server.data_dir / "m99.db"
    # Back to the earlier, consistent state: the newer entries, their checkpoints and head file gone.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq > ?", (earlier_seq,))
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (earlier_seq,))
        conn.execute(
            "INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?, ?, ?)",
            tuple(json.loads(earlier)[k] for k in ("seq", "hash", "ts", "signature")),
        )
    head.write_text(earlier)
    blind = server.cli("audit", "verify", "--db", str(db), "--public-key", public_key)
    assert blind.returncode == 0, blind.stderr  # indistinguishable from a shorter chain ...
    assert "removal of the newest entries" in blind.stdout and "cannot be ruled out" in blind.stdout  # ... said so
    anchored = server.cli("audit", "verify", "--db", str(db), "--public-key", public_key, "--anchor", str(anchor))
    assert anchored.returncode == 9 and "newest entries deleted" in anchored.stderr
