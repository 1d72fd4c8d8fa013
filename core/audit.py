"""The tamper-evident audit chain: entry hashing, signed checkpoints of the head, and verification.

Each entry's hash covers the previous hash, its seq and its canonical body, so edits, deletions and
reordering break the chain; signed checkpoints (also kept in a head file) expose a deleted tail.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .crypto import SigningKey, VerifyKey, canonical_json, sha256_hex
from .errors import AuditIntegrityError

__all__ = [
    "GENESIS_PREV",
    "HEAD_FILE_NAME",
    "Checkpoint",
    "VerifyResult",
    "entry_hash",
    "export_jsonl",
    "make_entry",
    "read_head_file",
    "sign_checkpoint",
    "utc_now_iso",
    "verify_entries",
    "verify_jsonl",
    "write_head_file",
]

GENESIS_PREV = "0" * 64
HEAD_FILE_NAME = "audit-head.json"
_BODY_FIELDS = ("seq", "ts", "kind", "actor", "data")
_LINE_FIELDS = frozenset((*_BODY_FIELDS, "hash", "prev"))
_CP_FIELDS = ("seq", "hash", "ts", "signature")


def entry_hash(prev_hash: str, seq: int, body: bytes) -> str:
    """SHA-256 of prev_hash, seq and body joined by newlines; ``_verify`` inlines the same bytes for speed."""
    return sha256_hex(prev_hash.encode() + b"\n" + str(seq).encode() + b"\n" + body)


def make_entry(
    prev_hash: str, seq: int, ts: str, kind: str, actor: dict[str, Any], data: dict[str, Any]
) -> tuple[bytes, str]:
    """The canonical body of a new entry and its chained hash."""
    if seq == 0 and kind != "genesis":
        raise ValueError("entry 0 must be the genesis entry")
    body = canonical_json({"seq": seq, "ts": ts, "kind": kind, "actor": actor, "data": data})
    return body, entry_hash(prev_hash, seq, body)


def utc_now_iso() -> str:
    """Now, as the ISO-8601 UTC timestamps entries carry: ``2026-01-01T12:00:00.000000Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Checkpoint:
    """The server's signature over the chain hash at ``seq``."""

    seq: int
    hash: str
    ts: str
    signature: str

    def message(self) -> bytes:
        return canonical_json({"seq": self.seq, "hash": self.hash, "ts": self.ts})

    def verify(self, vk: VerifyKey) -> bool:
        return vk.verify(self.message(), self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "ts": self.ts, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: Any) -> Checkpoint:
        if not isinstance(data, dict):
            raise ValueError("a checkpoint is a JSON object")
        seq = data.get("seq")
        # bool is an int subclass; a checkpoint at seq True is nonsense, not seq 1.
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"checkpoint seq must be a non-negative integer, not {seq!r}")
        for name in ("hash", "ts", "signature"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"checkpoint field {name!r} must be a string")
        return cls(seq, data["hash"], data["ts"], data["signature"])


def sign_checkpoint(key: SigningKey, seq: int, hash: str, ts: str) -> Checkpoint:
    """Sign the chain hash at ``seq``: what the server does after each committed batch."""
    unsigned = Checkpoint(seq, hash, ts, "")
    return Checkpoint(seq, hash, ts, key.sign(unsigned.message()))


def write_head_file(path: Path, checkpoint: Checkpoint, public_key_b64: str, *, sync: bool = False) -> None:
    """Replace the head file atomically, so a crash never leaves a half-written anchor.

    Not flushed to disk unless ``sync``: like the database's own commits (WAL, synchronous=NORMAL), the
    copy survives a crash of the process, and only a power cut can lose the newest one; an fsync per
    transaction would double what a registration costs."""
    text = json.dumps({**checkpoint.to_dict(), "public_key": public_key_b64}, sort_keys=True) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_head_file(path: Path) -> tuple[Checkpoint, str]:
    """The checkpoint and public key in a head file; ValueError if it is malformed."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    checkpoint = Checkpoint.from_dict(data)
    if not isinstance(data.get("public_key"), str):
        raise ValueError("head file has no public_key")
    return checkpoint, data["public_key"]


@dataclass
class VerifyResult:
    """The outcome of a verification.

    ``entries``, ``head_seq`` and ``head_hash`` describe the prefix that verified (-1 and GENESIS_PREV
    when none did); ``bad_seq`` is the first seq that does not verify, when there is one.
    """

    valid: bool
    entries: int
    head_seq: int
    head_hash: str
    checkpoint_seq: int | None = None
    bad_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_if_invalid(self) -> None:
        if not self.valid:
            raise AuditIntegrityError(f"audit chain does not verify: {self.reason}", detail=self.to_dict())


def failed(reason: str, bad_seq: int | None = None) -> VerifyResult:
    return VerifyResult(False, 0, -1, GENESIS_PREV, None, bad_seq, reason)


def _row_problem(prev: str, expected: int, seq: Any, body: Any, hash_: Any) -> str | None:
    """Why a row does not extend the chain, or None.  Slow path: only runs on a suspect row."""
    if not isinstance(seq, int) or isinstance(seq, bool):
        return f"entry {expected}: seq {seq!r} is not an integer (corrupted)"
    if seq != expected:
        how = "deleted or reordered" if seq > expected else "duplicated or reordered"
        return f"entry {expected} missing or out of order: expected seq {expected}, found {seq} ({how})"
    if not isinstance(body, bytes) or not isinstance(hash_, str):
        return f"entry {seq}: body or hash has the wrong type (corrupted)"
    if entry_hash(prev, seq, body) == hash_:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return f"entry {seq}: body is not valid JSON (edited)"
    body_seq = parsed.get("seq") if isinstance(parsed, dict) else None
    if isinstance(body_seq, int) and body_seq != seq:
        return f"entry {seq}: holds the body of entry {body_seq} (reordered or renumbered)"
    if seq == 0:
        return "entry 0: hash does not match its contents (edited)"
    # A body edit and a rewrite of the previous entry with a recomputed hash look identical here.
    return f"entry {seq}: hash does not match its contents (edited), or entry {seq - 1} was rewritten"


def verify_entries(
    rows: Iterable[tuple[int, bytes, str]],
    *,
    checkpoints: Sequence[Checkpoint],
    public_key_b64: str | None,
    require_checkpoint: bool = True,
) -> VerifyResult:
    """Walk ``(seq, body, hash)`` rows in seq order from 0 and check them against signed checkpoints."""
    return verify_walk(rows, checkpoints, public_key_b64, require_checkpoint, None)


class PositionalSource(Protocol):
    """A store's audit table read by position (its rows are ``(body, hash)``, the seq column apart):
    the walk hashes the position as the seq, and asks the source about the seq column afterwards."""

    def row_at(self, position: int) -> tuple[Any, Any, Any] | None:
        """(seq, body, hash) of the row at ``position`` in seq order."""

    def first_misnumbered(self, count: int) -> int | None:
        """The first position whose seq column is not that position, among the first ``count`` rows."""


def verify_walk(
    rows: Iterable[Any],
    checkpoints: Sequence[Checkpoint],
    public_key_b64: str | None,
    require_checkpoint: bool,
    source: PositionalSource | None,
) -> VerifyResult:
    """The walk behind every verifier.  With ``source``, rows are ``(body, hash)`` read from it by position."""
    cps = sorted(set(checkpoints), key=lambda c: c.seq)
    if cps:
        if not public_key_b64:
            return failed("checkpoints present but no server public key to check their signatures")
        try:
            vk = VerifyKey.from_b64(public_key_b64)
        except ValueError as exc:
            return failed(f"server public key is unusable: {exc}")
        # Signatures first: there are few checkpoints, and the walk below trusts their hashes.
        for cp in cps:
            if cp.seq < 0 or not cp.verify(vk):
                return failed(f"checkpoint at seq {cp.seq}: signature invalid (forged or wrong key)", cp.seq)
    wanted: dict[int, set[str]] = {}
    for cp in cps:
        wanted.setdefault(cp.seq, set()).add(cp.hash)
    cp_seqs = sorted(wanted)
    cp_index = 0
    next_cp = cp_seqs[0] if cp_seqs else -1
    checkpoint_seq: int | None = None

    it = iter(rows)
    first = next(it, None)
    sha = hashlib.sha256
    prev = GENESIS_PREV.encode()
    expected = 0
    bad = cp_mismatch = False
    seq: Any = None
    body: Any = None
    hash_: Any = None
    # Hot loops: one hash per row, nothing parsed; every anomaly breaks out to the slow path below.
    try:
        if first is not None:
            # Row 0 takes the slow path (peeking it is cheaper than chaining it back onto the loop).
            seq, body, hash_ = first if source is None else (0, *first)
            if _row_problem(prev.decode(), 0, seq, body, hash_) is not None:
                bad = True
            elif next_cp == 0 and hash_ not in wanted[0]:
                cp_mismatch = True
            else:
                if next_cp == 0:
                    checkpoint_seq, cp_index = 0, 1
                    next_cp = cp_seqs[1] if len(cp_seqs) > 1 else -1
                prev, expected = hash_.encode(), 1
        if expected and source is None:
            for seq, body, hash_ in it:
                if seq != expected or sha(b"%b\n%d\n%b" % (prev, seq, body)).hexdigest() != hash_:
                    bad = True
                    break
                if seq == next_cp:
                    if hash_ not in wanted[seq]:
                        cp_mismatch = True
                        break
                    checkpoint_seq = seq
                    cp_index += 1
                    next_cp = cp_seqs[cp_index] if cp_index < len(cp_seqs) else -1
                prev = hash_.encode()
                expected += 1
        elif expected:
            # Same walk without the seq column (~10% faster): the position is hashed as the seq, so a
            # missing or moved row still fails its hash; the seq column itself is checked afterwards.
            for seq, (body, hash_) in enumerate(it, 1):
                if sha(b"%b\n%d\n%b" % (prev, seq, body)).hexdigest() != hash_:
                    bad = True
                    break
                if seq == next_cp:
                    if hash_ not in wanted[seq]:
                        cp_mismatch = True
                        break
                    checkpoint_seq = seq
                    cp_index += 1
                    next_cp = cp_seqs[cp_index] if cp_index < len(cp_seqs) else -1
                prev = hash_.encode()
            else:
                seq += 1
            expected = seq
    except (TypeError, ValueError):
        bad = True
        if source is not None and isinstance(seq, int):
            expected = seq

    reason: str | None = None
    bad_seq: int | None = expected
    first_body = None if first is None else first[0] if source is not None else first[1]
    # Genesis is checked after the walk (one parse, not one per row) but reported before later faults.
    if expected > 0 and (kind := _genesis_kind(first_body)) != "genesis":
        bad_seq, reason = 0, f"entry 0 is not a genesis entry (kind {kind!r})"
    elif cp_mismatch:
        reason = (
            f"entry {expected}: chain hash does not match the signed checkpoint at seq {expected} "
            f"(entries up to {expected} rewritten)"
        )
    elif bad:
        if source is not None:
            # Re-read the failing row with its seq column to say what happened to it.
            seq, body, hash_ = source.row_at(expected) or (None, None, None)
        reason = _row_problem(prev.decode(), expected, seq, body, hash_) or f"entry {expected}: malformed row"
    elif source is not None and (bad_seq := source.first_misnumbered(expected)) is not None:
        reason = f"entry {bad_seq}: the row's seq column does not match its position (renumbered)"
    elif next_cp != -1:
        bad_seq = expected
        ends = f"chain ends at seq {expected - 1}" if expected else "chain is empty"
        reason = f"{ends} but a signed checkpoint covers seq {cp_seqs[-1]} (newest entries deleted)"
    elif not cps and require_checkpoint:
        reason = (
            "no signed checkpoint: truncation cannot be ruled out"
            if expected
            else "chain is empty and has no signed checkpoint: deletion cannot be ruled out"
        )
    head = (expected, expected - 1, prev.decode(), checkpoint_seq)
    return VerifyResult(reason is None, *head, bad_seq if reason else None, reason)


def _genesis_kind(body: Any) -> Any:
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        return None
    return parsed.get("kind") if isinstance(parsed, dict) and parsed.get("seq") == 0 else None


def resolve_key(pinned: str | None, found: Sequence[tuple[str, str | None]]) -> tuple[str | None, str | None]:
    """The key to verify with, or a failure reason.  A pinned key wins and must match every copy found."""
    present = [(where, key.strip()) for where, key in found if key is not None]
    if pinned is not None:
        for where, key in present:
            if key != pinned.strip():
                return None, f"the server public key in {where} differs from the pinned key (replaced)"
        return pinned.strip(), None
    if len({key for _, key in present}) > 1:
        return None, "the " + " and the ".join(w for w, _ in present) + " name different server public keys"
    return (present[0][1] if present else None), None


def export_jsonl(
    rows: Iterable[tuple[int, bytes, str]], checkpoints: Sequence[Checkpoint], public_key_b64: str | None
) -> Iterator[str]:
    """JSONL lines (each ending in a newline): one per entry, then the latest checkpoint and public key."""
    prev = GENESIS_PREV
    for seq, body, hash_ in rows:
        try:
            fields = json.loads(body)
        except ValueError:
            raise AuditIntegrityError(f"entry {seq}: body is not valid JSON; verify the chain first") from None
        line = {name: fields.get(name) for name in _BODY_FIELDS}
        yield canonical_json({**line, "hash": hash_, "prev": prev}).decode() + "\n"
        prev = hash_
    if checkpoints:
        latest = max(checkpoints, key=lambda c: c.seq)
        yield canonical_json({"checkpoint": latest.to_dict(), "public_key": public_key_b64}).decode() + "\n"


class _BadLine(Exception):
    # Not a ValueError on purpose: verify_entries treats those as a malformed row of its own.
    def __init__(self, reason: str, head_seq: int, head_hash: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.result = VerifyResult(
            False, head_seq + 1, head_seq, head_hash, None, head_seq + 1 if seq is None else seq, reason
        )


def _jsonl_rows(path: Path, stop: int) -> Iterator[tuple[int, bytes, str]]:
    """Entry lines as (seq, re-canonicalised body, hash), up to line ``stop`` (exclusive)."""
    prev_seq, prev_hash = -1, GENESIS_PREV
    with path.open("rb") as fh:
        for number, raw in enumerate(itertools.islice(fh, stop - 1), 1):
            if not raw.strip():
                continue
            where = f"line {number}"
            try:
                obj = json.loads(raw)
            except ValueError:
                raise _BadLine(f"{where}: not valid JSON (edited)", prev_seq, prev_hash) from None
            if not isinstance(obj, dict) or set(obj) != _LINE_FIELDS:
                extra = sorted(set(obj) ^ _LINE_FIELDS) if isinstance(obj, dict) else []
                raise _BadLine(f"{where}: not an audit entry (fields {extra} wrong)", prev_seq, prev_hash)
            seq, hash_ = obj["seq"], obj["hash"]
            if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(hash_, str):
                raise _BadLine(f"{where}: seq or hash has the wrong type (edited)", prev_seq, prev_hash)
            # 'prev' is redundant with the chain, but an unchecked field would be unauthenticated text.
            if seq == prev_seq + 1 and obj["prev"] != prev_hash:
                raise _BadLine(
                    f"entry {seq}: 'prev' does not match the hash of entry {prev_seq} (edited)",
                    prev_seq,
                    prev_hash,
                )
            try:
                body = canonical_json({name: obj[name] for name in _BODY_FIELDS})
            except ValueError as exc:
                raise _BadLine(f"entry {seq}: cannot be canonicalised ({exc})", prev_seq, prev_hash, seq) from None
            yield seq, body, hash_
            prev_seq, prev_hash = seq, hash_


def verify_jsonl(
    path: Path | str, *, public_key_b64: str | None = None, anchors: Sequence[Checkpoint] = ()
) -> VerifyResult:
    """Verify a JSONL export: the entries, and the closing checkpoint line (and ``anchors``) against
    truncation."""
    path = Path(path)
    last_number, last_line = 0, b""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if raw.strip():
                last_number, last_line = number, raw
    checkpoints: list[Checkpoint] = list(anchors)
    key = public_key_b64
    stop = last_number + 1
    try:
        tail = json.loads(last_line) if last_line else None
    except ValueError:
        tail = None  # an unparseable last line is reported by the entry walk
    if isinstance(tail, dict) and "checkpoint" in tail:
        if set(tail) != {"checkpoint", "public_key"}:
            return failed(f"line {last_number}: checkpoint line has unexpected fields {sorted(tail)}")
        try:
            checkpoints.append(Checkpoint.from_dict(tail["checkpoint"]))
        except ValueError as exc:
            return failed(f"line {last_number}: checkpoint is malformed: {exc}")
        found = tail.get("public_key")
        key, problem = resolve_key(public_key_b64, [("export", found if isinstance(found, str) else None)])
        if problem:
            return failed(problem)
        stop = last_number
    try:
        return verify_entries(_jsonl_rows(path, stop), checkpoints=checkpoints, public_key_b64=key)
    except _BadLine as exc:
        return exc.result
