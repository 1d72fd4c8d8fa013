"""The audit chain: real SQLite files, real Ed25519 keys, and one test per way of tampering with them."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from m99.audit import (
    GENESIS_PREV,
    HEAD_FILE_NAME,
    Checkpoint,
    VerifyResult,
    entry_hash,
    export_jsonl,
    make_entry,
    read_head_file,
    sign_checkpoint,
    utc_now_iso,
    verify_entries,
    verify_jsonl,
    write_head_file,
)
from m99.crypto import SigningKey, VerifyKey, canonical_json, sha256_hex
from m99.errors import AuditIntegrityError
from m99.store.sqlite import verify_sqlite

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE audit_entries (
    seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL, signature TEXT NOT NULL
);
"""

N = 50  # entries 0..49
EVERY = 10  # a checkpoint per batch of 10: seqs 9, 19, 29, 39, 49


@dataclass
class Chain:
    db: Path
    key: SigningKey

    @property
    def head(self) -> Path:
        return self.db.parent / HEAD_FILE_NAME

    def sql(self, statement: str, *params: object) -> None:
        with sqlite3.connect(self.db) as conn:
            conn.execute(statement, params)
        conn.close()

    def rows(self) -> list[tuple[int, bytes, str]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT seq, body, hash FROM audit_entries ORDER BY seq").fetchall()
        finally:
            conn.close()

    def checkpoints(self) -> list[Checkpoint]:
        conn = sqlite3.connect(self.db)
        try:
            return [Checkpoint(*r) for r in conn.execute("SELECT seq, hash, ts, signature FROM audit_checkpoints")]
        finally:
            conn.close()

    def body(self, seq: int) -> dict[str, Any]:
        fields: dict[str, Any] = json.loads(self.rows()[seq][1])
        return fields

    def verify(self, head_file: Path | None = None, public_key_b64: str | None = None) -> VerifyResult:
        return verify_sqlite(self.db, head_file=head_file, public_key_b64=public_key_b64)


def entry_fields(seq: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if seq == 0:
        return "genesis", {"by": "server"}, {"version": "0.1.0"}
    actor = {"by": "operator:alice", "token": "sha256:" + "ab" * 32, "role": "admin"}
    return "authorization.armed", actor, {"scope": f"agent:a{seq}", "level": 3, "reason": f"drill {seq}"}


def write_chain(db: Path, key: SigningKey, n: int = N, every: int = EVERY, head: bool = True) -> None:
    """What the server does: append entries in batches, sign a checkpoint after each, update the head file."""
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('server_public_key', ?)", (key.public_b64,))
    prev = GENESIS_PREV
    for seq in range(n):
        ts = f"2026-01-01T00:00:{seq % 60:02d}.000000Z"
        kind, actor, data = entry_fields(seq)
        body, prev = make_entry(prev, seq, ts, kind, actor, data)
        conn.execute("INSERT INTO audit_entries VALUES (?, ?, ?, ?, ?)", (seq, ts, kind, body, prev))
        if every and (seq + 1) % every == 0:
            cp = sign_checkpoint(key, seq, prev, ts)
            conn.execute("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?)", tuple(cp.to_dict().values()))
            if head:
                write_head_file(db.parent / HEAD_FILE_NAME, cp, key.public_b64)
    conn.commit()
    conn.close()


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    key = SigningKey.generate()
    db = tmp_path / "m99.db"
    write_chain(db, key)
    return Chain(db, key)


def rewrite_from(chain: Chain, start: int, change: dict[str, object]) -> None:
    """An attacker who edits entry ``start`` and recomputes every later hash (but cannot sign)."""
    rows = chain.rows()
    prev = rows[start - 1][2] if start else GENESIS_PREV
    for seq, body, _ in rows[start:]:
        fields = json.loads(body)
        if seq == start:
            fields["data"].update(change)
        new_body, prev = make_entry(prev, seq, fields["ts"], fields["kind"], fields["actor"], fields["data"])
        chain.sql("UPDATE audit_entries SET body = ?, hash = ? WHERE seq = ?", new_body, prev, seq)


# --- the construction itself -----------------------------------------------------------------------


def test_entry_hash_is_the_documented_construction() -> None:
    body = canonical_json({"seq": 3, "ts": "t", "kind": "k", "actor": {}, "data": {}})
    assert entry_hash("ab" * 32, 3, body) == sha256_hex(("ab" * 32).encode() + b"\n3\n" + body)
    made_body, made_hash = make_entry("ab" * 32, 3, "t", "k", {}, {})
    assert (made_body, made_hash) == (body, entry_hash("ab" * 32, 3, body))
    assert GENESIS_PREV == "0" * 64
    with pytest.raises(ValueError):
        make_entry(GENESIS_PREV, 0, "t", "not-genesis", {}, {})


def test_checkpoint_signs_seq_hash_and_ts() -> None:
    key = SigningKey.generate()
    cp = sign_checkpoint(key, 7, "cd" * 32, "2026-01-01T00:00:00.000000Z")
    assert cp.message() == canonical_json({"seq": 7, "hash": "cd" * 32, "ts": "2026-01-01T00:00:00.000000Z"})
    assert cp.verify(VerifyKey(key.public_bytes))
    assert not cp.verify(VerifyKey(SigningKey.generate().public_bytes))
    assert not Checkpoint(8, cp.hash, cp.ts, cp.signature).verify(VerifyKey(key.public_bytes))
    assert Checkpoint.from_dict(cp.to_dict()) == cp
    with pytest.raises(ValueError):
        Checkpoint.from_dict({**cp.to_dict(), "seq": True})


def test_head_file_round_trip_is_atomic(tmp_path: Path) -> None:
    key = SigningKey.generate()
    cp = sign_checkpoint(key, 1, "ef" * 32, utc_now_iso())
    path = tmp_path / "data" / HEAD_FILE_NAME
    write_head_file(path, cp, key.public_b64)
    write_head_file(path, cp, key.public_b64)
    assert read_head_file(path) == (cp, key.public_b64)
    assert sorted(p.name for p in path.parent.iterdir()) == [HEAD_FILE_NAME]  # no temp files left
    assert set(json.loads(path.read_text())) == {"seq", "hash", "ts", "signature", "public_key"}


def test_utc_now_iso_is_utc() -> None:
    assert utc_now_iso().endswith("Z") and "T" in utc_now_iso()


# --- an untouched chain --------------------------------------------------------------------------


def test_untouched_chain_verifies(chain: Chain) -> None:
    result = verify_sqlite(chain.db, public_key_b64=chain.key.public_b64)
    assert result.valid, result.reason
    assert (result.entries, result.head_seq, result.checkpoint_seq) == (N, N - 1, N - 1)
    assert result.head_hash == chain.rows()[-1][2]
    assert result.to_dict()["reason"] is None
    result.raise_if_invalid()  # does not raise


def test_entries_after_the_last_checkpoint_are_fine(tmp_path: Path) -> None:
    key = SigningKey.generate()
    write_chain(tmp_path / "m99.db", key, n=N + 3)  # 3 entries whose batch is not yet checkpointed
    result = verify_sqlite(tmp_path / "m99.db")
    assert result.valid, result.reason
    assert (result.entries, result.checkpoint_seq) == (N + 3, N - 1)


def test_verify_opens_read_only_and_never_creates_a_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_sqlite(tmp_path / "m99.db")
    assert not (tmp_path / "m99.db").exists()


def test_no_checkpoint_means_truncation_cannot_be_ruled_out(tmp_path: Path) -> None:
    write_chain(tmp_path / "m99.db", SigningKey.generate(), every=0)
    result = verify_sqlite(tmp_path / "m99.db")
    assert not result.valid
    assert result.reason == "no signed checkpoint: truncation cannot be ruled out"
    assert verify_sqlite(tmp_path / "m99.db", require_checkpoint=False).valid


# --- tampering with the database -----------------------------------------------------------------


def test_edited_body_byte(chain: Chain) -> None:
    body = chain.rows()[17][1]
    chain.sql("UPDATE audit_entries SET body = ? WHERE seq = 17", body.replace(b"drill 17", b"drill 71"))
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 17
    assert result.reason.startswith("entry 17: hash does not match its contents (edited)")
    assert (result.entries, result.head_seq) == (17, 16)
    with pytest.raises(AuditIntegrityError, match="entry 17"):
        result.raise_if_invalid()


def test_edited_body_with_recomputed_hash_breaks_the_next_link(chain: Chain) -> None:
    body = chain.body(17)
    body["data"]["reason"] = "nothing happened"
    prev = chain.rows()[16][2]
    new_body, new_hash = make_entry(prev, 17, body["ts"], body["kind"], body["actor"], body["data"])
    chain.sql("UPDATE audit_entries SET body = ?, hash = ? WHERE seq = 17", new_body, new_hash)
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 18
    assert "entry 17 was rewritten" in result.reason


def test_rewritten_tail_is_caught_by_the_next_signed_checkpoint(chain: Chain) -> None:
    rewrite_from(chain, 17, {"reason": "nothing happened"})  # every later hash recomputed: links all hold
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 19
    assert result.reason == (
        "entry 19: chain hash does not match the signed checkpoint at seq 19 (entries up to 19 rewritten)"
    )


def test_rewritten_newest_entry_is_caught_by_its_checkpoint(chain: Chain) -> None:
    rewrite_from(chain, N - 1, {"level": 1})
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == N - 1
    assert "does not match the signed checkpoint at seq 49" in result.reason


def test_rewritten_genesis_is_caught_by_a_checkpoint_at_seq_0(chain: Chain) -> None:
    genesis = chain.rows()[0]
    cp = sign_checkpoint(chain.key, 0, genesis[2], "2026-01-01T00:00:00.000000Z")
    chain.sql("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?)", *cp.to_dict().values())
    assert chain.verify().valid
    rewrite_from(chain, 0, {"version": "9.9.9"})
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 0
    assert "does not match the signed checkpoint at seq 0" in result.reason


def test_deleted_middle_entry(chain: Chain) -> None:
    chain.sql("DELETE FROM audit_entries WHERE seq = 12")
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 12
    assert result.reason == ("entry 12 missing or out of order: expected seq 12, found 13 (deleted or reordered)")


def test_gap_after_the_last_checkpoint_with_recomputed_hashes(tmp_path: Path) -> None:
    # No checkpoint covers 50..52, so only the seq numbering can show that entry 51 was removed.
    key = SigningKey.generate()
    chain = Chain(tmp_path / "m99.db", key)
    write_chain(chain.db, key, n=N + 3)
    rows = chain.rows()
    fields = json.loads(rows[52][1])
    body, digest = make_entry(rows[50][2], 52, fields["ts"], fields["kind"], fields["actor"], fields["data"])
    chain.sql("DELETE FROM audit_entries WHERE seq = 51")
    chain.sql("UPDATE audit_entries SET body = ?, hash = ? WHERE seq = 52", body, digest)
    for result in (
        chain.verify(),
        verify_entries(chain.rows(), checkpoints=chain.checkpoints(), public_key_b64=key.public_b64),
    ):
        assert not result.valid
        assert result.bad_seq == 51
        assert result.reason == "entry 51 missing or out of order: expected seq 51, found 52 (deleted or reordered)"


def test_swapped_entries(chain: Chain) -> None:
    chain.sql("UPDATE audit_entries SET seq = -1 WHERE seq = 10")
    chain.sql("UPDATE audit_entries SET seq = 10 WHERE seq = 20")
    chain.sql("UPDATE audit_entries SET seq = 20 WHERE seq = -1")
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 10
    assert result.reason == "entry 10: holds the body of entry 20 (reordered or renumbered)"


def test_renumbered_seq_column(chain: Chain) -> None:
    # Bodies and hashes untouched, only the row's seq column moved: content verifies, numbering does not.
    chain.sql("UPDATE audit_entries SET seq = 1049 WHERE seq = 49")
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 49
    assert "seq column does not match its position" in result.reason


def test_not_a_genesis_entry(tmp_path: Path) -> None:
    key = SigningKey.generate()
    write_chain(tmp_path / "m99.db", key, n=0, every=0)
    body = canonical_json({"seq": 0, "ts": "t", "kind": "authorization.armed", "actor": {}, "data": {}})
    digest = entry_hash(GENESIS_PREV, 0, body)
    chain = Chain(tmp_path / "m99.db", key)
    chain.sql("INSERT INTO audit_entries VALUES (0, 't', 'authorization.armed', ?, ?)", body, digest)
    result = verify_sqlite(chain.db, require_checkpoint=False)
    assert not result.valid
    assert result.bad_seq == 0
    assert result.reason == "entry 0 is not a genesis entry (kind 'authorization.armed')"


def test_truncated_tail_is_caught_by_the_checkpoint_table(chain: Chain) -> None:
    chain.head.unlink()  # only the table's checkpoint at 49 is left to notice
    chain.sql("DELETE FROM audit_entries WHERE seq >= 45")
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 45
    assert result.reason == "chain ends at seq 44 but a signed checkpoint covers seq 49 (newest entries deleted)"


def test_truncated_tail_and_checkpoints_are_caught_by_the_head_file(chain: Chain) -> None:
    chain.sql("DELETE FROM audit_entries WHERE seq >= 45")
    chain.sql("DELETE FROM audit_checkpoints WHERE seq >= 45")
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 45
    assert result.reason == "chain ends at seq 44 but a signed checkpoint covers seq 49 (newest entries deleted)"
    # The database alone is now self-consistent: the head file outside it is what caught the deletion.
    chain.head.unlink()
    assert chain.verify().valid


def test_explicit_head_file_that_is_missing_fails(chain: Chain, tmp_path: Path) -> None:
    result = chain.verify(head_file=tmp_path / "elsewhere.json")
    assert not result.valid
    assert "not found" in result.reason


def test_forged_checkpoint_signature(chain: Chain) -> None:
    attacker = SigningKey.generate()
    cp = next(c for c in chain.checkpoints() if c.seq == 29)
    forged = sign_checkpoint(attacker, cp.seq, cp.hash, cp.ts)
    chain.sql("UPDATE audit_checkpoints SET signature = ? WHERE seq = 29", forged.signature)
    result = chain.verify()
    assert not result.valid
    assert result.bad_seq == 29
    assert result.reason == "checkpoint at seq 29: signature invalid (forged or wrong key)"


def test_forged_head_file_covering_more_than_exists(chain: Chain) -> None:
    head, public_key = read_head_file(chain.head)
    write_head_file(chain.head, Checkpoint(head.seq + 100, head.hash, head.ts, head.signature), public_key)
    result = chain.verify()
    assert not result.valid
    assert result.reason == f"checkpoint at seq {head.seq + 100}: signature invalid (forged or wrong key)"


def test_replaced_server_key_is_caught_by_a_pinned_key(chain: Chain) -> None:
    # The attacker rewrites history and re-signs everything with a key of their own.
    attacker = SigningKey.generate()
    rewrite_from(chain, 5, {"reason": "nothing happened"})
    rows = chain.rows()
    chain.sql("DELETE FROM audit_checkpoints")
    for seq in (9, 19, 29, 39, 49):
        cp = sign_checkpoint(attacker, seq, rows[seq][2], "2026-01-02T00:00:00.000000Z")
        chain.sql("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?)", *cp.to_dict().values())
    chain.sql("UPDATE meta SET value = ? WHERE key = 'server_public_key'", attacker.public_b64)
    write_head_file(chain.head, cp, attacker.public_b64)
    assert chain.verify().valid  # without a pin the forgery is self-consistent...
    result = chain.verify(public_key_b64=chain.key.public_b64)  # ...the pinned key is what catches it
    assert not result.valid
    assert result.reason == "the server public key in database differs from the pinned key (replaced)"


def test_head_file_and_database_naming_different_keys(chain: Chain) -> None:
    head, _ = read_head_file(chain.head)
    write_head_file(chain.head, head, SigningKey.generate().public_b64)
    result = chain.verify()
    assert not result.valid
    assert result.reason == "the database and the head file name different server public keys"


# --- verify_entries directly (the path the server's API uses) ------------------------------------


def test_verify_entries_on_rows_in_memory(chain: Chain) -> None:
    rows, cps = chain.rows(), chain.checkpoints()
    assert verify_entries(rows, checkpoints=cps, public_key_b64=chain.key.public_b64).valid
    gap = verify_entries(rows[:12] + rows[13:], checkpoints=cps, public_key_b64=chain.key.public_b64)
    assert (gap.valid, gap.bad_seq) == (False, 12)
    assert gap.reason.startswith("entry 12 missing or out of order")
    short = verify_entries(rows[:45], checkpoints=cps, public_key_b64=chain.key.public_b64)
    assert (short.valid, short.bad_seq) == (False, 45)
    unsigned = verify_entries(rows, checkpoints=cps, public_key_b64=None)
    assert not unsigned.valid and "no server public key" in unsigned.reason
    empty = verify_entries([], checkpoints=[], public_key_b64=None)
    assert not empty.valid and "chain is empty" in empty.reason
    assert verify_entries([], checkpoints=[], public_key_b64=None, require_checkpoint=False).valid


# --- JSONL export --------------------------------------------------------------------------------


def export(chain: Chain, path: Path) -> list[str]:
    lines = list(export_jsonl(chain.rows(), chain.checkpoints(), chain.key.public_b64))
    path.write_text("".join(lines))
    return lines


def test_jsonl_round_trip(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    assert len(lines) == N + 1
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert set(first) == {"seq", "ts", "kind", "actor", "data", "hash", "prev"}
    assert first["prev"] == GENESIS_PREV and first["kind"] == "genesis"
    assert last == {"checkpoint": chain.checkpoints()[-1].to_dict(), "public_key": chain.key.public_b64}
    result = verify_jsonl(tmp_path / "audit.jsonl", public_key_b64=chain.key.public_b64)
    assert result.valid, result.reason
    assert (result.entries, result.checkpoint_seq) == (N, N - 1)


def test_jsonl_edited_line(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    lines[17] = lines[17].replace("drill 17", "drill 71")
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.bad_seq == 17
    assert result.reason.startswith("entry 17: hash does not match its contents (edited)")


def test_jsonl_edited_prev_field(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    line = json.loads(lines[17])
    lines[17] = json.dumps({**line, "prev": "f" * 64}) + "\n"
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.bad_seq == 17
    assert "'prev' does not match" in result.reason


def test_jsonl_rewritten_history_with_recomputed_hashes(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    prev = json.loads(lines[16])["hash"]
    for i in range(17, N):
        line = json.loads(lines[i])
        if i == 17:
            line["data"]["reason"] = "nothing happened"
        fields = [line[name] for name in ("ts", "kind", "actor", "data")]
        _, digest = make_entry(prev, i, *fields)
        lines[i] = json.dumps({**line, "hash": digest, "prev": prev}) + "\n"
        prev = digest
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.bad_seq == N - 1
    assert "does not match the signed checkpoint at seq 49" in result.reason


def test_jsonl_deleted_line(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    del lines[12]
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.bad_seq == 12
    assert "entry 12 missing or out of order" in result.reason


def test_jsonl_reordered_lines(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    lines[10], lines[20] = lines[20], lines[10]
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.bad_seq == 10
    assert "expected seq 10, found 20" in result.reason


def test_jsonl_dropped_checkpoint_line(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    (tmp_path / "audit.jsonl").write_text("".join(lines[:-1]))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.reason == "no signed checkpoint: truncation cannot be ruled out"


def test_jsonl_truncated_entries(chain: Chain, tmp_path: Path) -> None:
    lines = export(chain, tmp_path / "audit.jsonl")
    (tmp_path / "audit.jsonl").write_text("".join(lines[:45] + lines[-1:]))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.bad_seq == 45
    assert result.reason == "chain ends at seq 44 but a signed checkpoint covers seq 49 (newest entries deleted)"


def test_jsonl_with_a_different_key_than_pinned(chain: Chain, tmp_path: Path) -> None:
    export(chain, tmp_path / "audit.jsonl")
    result = verify_jsonl(tmp_path / "audit.jsonl", public_key_b64=SigningKey.generate().public_b64)
    assert not result.valid
    assert result.reason == "the server public key in export differs from the pinned key (replaced)"


def test_jsonl_extra_field_is_refused(chain: Chain, tmp_path: Path) -> None:
    # A field outside the hashed body would be unauthenticated text riding along with the entry.
    lines = export(chain, tmp_path / "audit.jsonl")
    lines[3] = json.dumps({**json.loads(lines[3]), "note": "approved by the CEO"}) + "\n"
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    result = verify_jsonl(tmp_path / "audit.jsonl")
    assert not result.valid
    assert result.bad_seq == 3
    assert "line 4: not an audit entry" in result.reason
