"""Case packs: everything that proves one halt, in one zip, verifiable offline with nothing but the file.

Members (``MEMBERS`` plus one ``evidence/<agent>.json`` per agent that sent evidence):

    manifest.json         format, execution id, the SHA-256 of every other member, the server key
    manifest.sig          the server's Ed25519 signature of manifest.json's bytes
    keys.json             the server's public key, and each agent's (name, registration id, key)
    authorization.json    who armed, who executed, roles, token identities, reasons
    execution.json        the execution as the control plane records it, with per-agent time-to-halt
    server_snapshot.json  the control plane's signed snapshot at execute
    receipts.json         every agent's signed acknowledgement with its receipt of checks
    audit.jsonl           the audit-chain slice covering the execution (raw entry bodies, linked)
    checkpoint.json       the server's signed checkpoint of the slice's last entry

``build`` and ``verify`` are pure functions over bytes; ``verify`` names the first member and check that
fails.  What counts as confirmed is decided again from the signed receipts, never taken on trust.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import audit
from ..crypto import SigningKey, VerifyKey, canonical_json, sha256_hex
from ..protocol import document_signature_ok, request_message
from .receipts import receipt_problems

__all__ = ["FORMAT", "MEMBERS", "CasePackInvalid", "Report", "build", "verify"]

FORMAT = "m99-casepack/1"
MEMBERS = (
    "keys.json",
    "authorization.json",
    "execution.json",
    "server_snapshot.json",
    "receipts.json",
    "audit.jsonl",
    "checkpoint.json",
)
MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 64 * 1024 * 1024
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same inputs give the same bytes


class CasePackInvalid(Exception):
    """A case pack that does not verify: ``member`` and ``check`` name the first failure."""

    def __init__(self, member: str, check: str, detail: str) -> None:
        super().__init__(f"{member}: {check}: {detail}")
        self.member, self.check, self.detail = member, check, detail


@dataclass
class Report:
    """What a valid case pack shows."""

    execution_id: str
    origin: str
    level: int
    scope: str
    in_scope: int
    confirmed: dict[str, float]  # agent -> time-to-halt in ms
    not_confirmed: dict[str, str]  # agent -> why
    slo_ms: float
    server_key: str
    audit_entries: int
    evidence: list[str] = field(default_factory=list)

    @property
    def slowest_ms(self) -> float | None:
        return max(self.confirmed.values()) if self.confirmed else None

    @property
    def within_slo(self) -> bool:
        return not self.not_confirmed and all(ms <= self.slo_ms for ms in self.confirmed.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": True,
            "execution_id": self.execution_id,
            "origin": self.origin,
            "level": self.level,
            "scope": self.scope,
            "in_scope": self.in_scope,
            "confirmed": len(self.confirmed),
            "not_confirmed": self.not_confirmed,
            "slowest_ms": self.slowest_ms,
            "slo_ms": self.slo_ms,
            "within_slo": self.within_slo,
            "server_key": self.server_key,
            "audit_entries": self.audit_entries,
            "evidence": self.evidence,
        }


# -- build --------------------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return canonical_json(value) + b"\n"


def build(
    key: SigningKey,
    *,
    execution: dict[str, Any],
    authorization: dict[str, Any] | None,
    server_snapshot: dict[str, Any],
    receipts: list[dict[str, Any]],
    evidence: list[dict[str, Any]],
    agent_keys: dict[str, dict[str, str]],
    audit_rows: Iterable[tuple[int, bytes, str]],
    audit_prev: str,
    created_at: str,
) -> bytes:
    """The case pack's bytes.  ``receipts``: ``{agent, agent_id, signed}`` (the signed ack as kept);
    ``evidence``: ``{agent, agent_id, signed}``; ``agent_keys``: name -> ``{agent_id, public_key}``;
    ``audit_rows``: the slice's (seq, body, hash), ``audit_prev`` the hash before its first entry."""
    lines: list[bytes] = []
    last: tuple[int, str] | None = None
    prev = audit_prev
    for seq, body, hash_ in audit_rows:
        entry: dict[str, Any] = {"seq": seq, "body": body.decode(), "hash": hash_}
        if not lines:
            entry["prev"] = prev
        lines.append(canonical_json(entry) + b"\n")
        last = (seq, hash_)
    if last is None:
        raise ValueError("a case pack needs the audit entries of its execution")
    checkpoint = audit.sign_checkpoint(key, last[0], last[1], created_at)
    members: dict[str, bytes] = {
        "keys.json": _json({"server": key.public_b64, "agents": dict(sorted(agent_keys.items()))}),
        "authorization.json": _json(authorization),
        "execution.json": _json(execution),
        "server_snapshot.json": _json(server_snapshot),
        "receipts.json": _json(sorted(receipts, key=lambda r: str(r.get("agent")))),
        "audit.jsonl": b"".join(lines),
        "checkpoint.json": _json(checkpoint.to_dict()),
    }
    for item in sorted(evidence, key=lambda e: str(e.get("agent"))):
        members[f"evidence/{item['agent']}.json"] = _json(item)
    manifest = _json(
        {
            "format": FORMAT,
            "execution_id": execution.get("id"),
            "created_at": created_at,
            "server_public_key": key.public_b64,
            "members": {name: sha256_hex(data) for name, data in sorted(members.items())},
        }
    )
    return _zip(
        [("manifest.json", manifest), ("manifest.sig", key.sign(manifest).encode() + b"\n"), *sorted(members.items())]
    )


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    """The one byte form of a case pack: members stored (uncompressed, so no compressor version can
    change a byte), in order, with fixed times.  ``verify`` rebuilds it: a changed byte outside the
    members (a time, an attribute, a comment) is caught too."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


# -- verify -------------------------------------------------------------------------------------------


def _load(member: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CasePackInvalid(member, "json", f"not valid JSON ({exc})") from None


def _read(data: bytes) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise CasePackInvalid("(file)", "zip", f"not a zip archive ({exc})") from None
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CasePackInvalid("(file)", "zip", f"{len(infos)} members, more than {MAX_MEMBERS}")
    members: dict[str, bytes] = {}
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            raise CasePackInvalid(info.filename, "size", f"{info.file_size} bytes, more than {MAX_MEMBER_BYTES}")
        if info.filename in members:
            raise CasePackInvalid(info.filename, "zip", "the member appears twice")
        try:
            members[info.filename] = zf.read(info)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:  # a changed byte
            raise CasePackInvalid(info.filename, "zip", f"unreadable ({exc})") from None
    return members


def _key(member: str, text: Any) -> VerifyKey:
    try:
        return VerifyKey.from_b64(str(text))
    except (ValueError, TypeError) as exc:
        raise CasePackInvalid(member, "key", f"not an Ed25519 public key ({exc})") from None


def verify(data: bytes, *, public_key: str | None = None) -> Report:
    """Check every signature, hash and chain link of a case pack; raises ``CasePackInvalid`` naming the
    first member and check that fails, else returns what it shows."""
    members = _read(data)
    for needed in ("manifest.json", "manifest.sig", "keys.json"):
        if needed not in members:
            raise CasePackInvalid(needed, "present", "missing")
    keys = _load("keys.json", members["keys.json"])
    if not isinstance(keys, dict) or not isinstance(keys.get("agents"), dict):
        raise CasePackInvalid("keys.json", "format", "expected {server, agents}")
    if public_key is not None and keys.get("server") != public_key:
        raise CasePackInvalid("keys.json", "pinned key", "the server key is not the pinned --public-key")
    server = _key("keys.json", keys.get("server"))
    manifest_bytes = members["manifest.json"]
    if not server.verify(manifest_bytes, members["manifest.sig"].decode("ascii", "replace").strip()):
        raise CasePackInvalid("manifest.sig", "signature", "manifest.json is not signed by the server key in keys.json")
    manifest = _load("manifest.json", manifest_bytes)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CasePackInvalid("manifest.json", "format", f"not a {FORMAT} manifest")
    if manifest.get("server_public_key") != keys.get("server"):
        raise CasePackInvalid("manifest.json", "server key", "differs from the key in keys.json")
    listed = manifest.get("members")
    if not isinstance(listed, dict):
        raise CasePackInvalid("manifest.json", "members", "no member list")
    for name in MEMBERS:
        if name not in listed:
            raise CasePackInvalid(name, "listed", "not in the manifest")
    for name in sorted(listed):
        if name not in members:
            raise CasePackInvalid(name, "present", "listed in the manifest but missing from the file")
    for name in sorted(members):
        if name not in listed and name not in ("manifest.json", "manifest.sig"):
            raise CasePackInvalid(name, "listed", "in the file but not in the manifest (added)")
    for name in sorted(listed):
        if sha256_hex(members[name]) != listed[name]:
            raise CasePackInvalid(name, "hash", "its SHA-256 differs from the manifest's")
    report = _contents(members, manifest, keys, server)
    order = ["manifest.json", "manifest.sig", *sorted(n for n in members if n not in ("manifest.json", "manifest.sig"))]
    if _zip([(n, members[n]) for n in order]) != data:
        raise CasePackInvalid("(file)", "canonical form", "bytes outside the members differ from a sealed case pack")
    return report


def _contents(members: dict[str, bytes], manifest: dict[str, Any], keys: dict[str, Any], server: VerifyKey) -> Report:
    execution = _load("execution.json", members["execution.json"])
    execution_id = manifest.get("execution_id")
    if not isinstance(execution, dict) or execution.get("id") != execution_id:
        raise CasePackInvalid("execution.json", "execution id", "not the manifest's execution")
    snapshot = document_signature_ok(server, _load("server_snapshot.json", members["server_snapshot.json"]))
    if snapshot is None:
        raise CasePackInvalid("server_snapshot.json", "signature", "not signed by the server key")
    if snapshot.get("execution_id") != execution_id:
        raise CasePackInvalid("server_snapshot.json", "execution id", "a snapshot of another execution")
    in_scope = {a["name"]: a for a in snapshot.get("agents", []) if isinstance(a, dict) and "name" in a}
    if sorted(in_scope) != sorted(execution.get("agents", [])):
        raise CasePackInvalid("execution.json", "agents", "the agents in scope differ from the signed snapshot's")
    agent_keys: dict[str, VerifyKey] = {}
    for name, entry in keys["agents"].items():
        signed_entry = in_scope.get(name)
        if not isinstance(entry, dict) or signed_entry is None:
            raise CasePackInvalid("keys.json", "agents", f"{name!r} was not in scope")
        if entry.get("public_key") != signed_entry.get("public_key") or entry.get("agent_id") != signed_entry.get(
            "agent_id"
        ):
            raise CasePackInvalid("keys.json", "agent key", f"{name!r}: not the key the server snapshot signed")
        agent_keys[name] = _key("keys.json", entry.get("public_key"))
    level = int(snapshot.get("level") or 0)
    stated = (execution.get("time_to_halt") or {}).get("per_agent") or {}
    confirmed: dict[str, float] = {}
    why: dict[str, str] = {}
    receipts = _load("receipts.json", members["receipts.json"])
    if not isinstance(receipts, list):
        raise CasePackInvalid("receipts.json", "format", "expected a list")
    for item in receipts:
        name = str(item.get("agent")) if isinstance(item, dict) else "?"
        if name not in agent_keys or not isinstance(item, dict) or not isinstance(item.get("signed"), dict):
            raise CasePackInvalid("receipts.json", "agent", f"a receipt of {name!r}, who has no key in keys.json")
        signed = item["signed"]
        message = request_message("ack", in_scope[name]["agent_id"], signed)
        if not agent_keys[name].verify(message, str(signed.get("signature", ""))):
            raise CasePackInvalid("receipts.json", "signature", f"{name!r}: not signed by the agent's key")
        problems = receipt_problems(signed.get("receipt"), level)
        if problems:
            why[name] = "receipt does not confirm the halt: " + "; ".join(problems)
        elif name in stated:
            confirmed[name] = float(stated[name])
        else:
            why[name] = "the control plane did not record a time-to-halt"
    for name in in_scope:
        if name not in confirmed and name not in why:
            why[name] = "never acknowledged"
    evidence = []
    for member in sorted(m for m in members if m.startswith("evidence/")):
        item = _load(member, members[member])
        name = str(item.get("agent")) if isinstance(item, dict) else "?"
        signed = item.get("signed") if isinstance(item, dict) else None
        if name not in agent_keys or not isinstance(signed, dict):
            raise CasePackInvalid(member, "agent", f"evidence of {name!r}, who has no key in keys.json")
        if not agent_keys[name].verify(
            request_message("evidence", in_scope[name]["agent_id"], signed), str(signed.get("signature", ""))
        ):
            raise CasePackInvalid(member, "signature", f"{name!r}: not signed by the agent's key")
        doc = signed.get("evidence") or {}
        if doc.get("agent") != name or execution_id not in (doc.get("execution_ids") or []):
            raise CasePackInvalid(member, "subject", "evidence about another agent or execution")
        evidence.append(name)
    entries = _audit(members, server, str(execution_id))
    return Report(
        str(execution_id),
        str(snapshot.get("origin")),
        level,
        str(snapshot.get("scope")),
        len(in_scope),
        dict(sorted(confirmed.items())),
        dict(sorted(why.items())),
        float(snapshot.get("halt_slo_seconds", 5.0)) * 1000,
        str(keys.get("server")),
        entries,
        evidence,
    )


def _audit(members: dict[str, bytes], server: VerifyKey, execution_id: str) -> int:
    member = "audit.jsonl"
    prev: str | None = None
    expected: int | None = None
    first = 0
    last: tuple[int, str] | None = None
    started = completed = False
    for number, line in enumerate(members[member].splitlines(), 1):
        entry = _load(member, line)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("seq"), int)
            or not isinstance(entry.get("body"), str)
        ):
            raise CasePackInvalid(member, "format", f"line {number}: expected {{seq, body, hash}}")
        seq = entry["seq"]
        if prev is None:
            prev, first = str(entry.get("prev", "")), seq
        elif seq != expected:
            raise CasePackInvalid(member, "sequence", f"line {number}: entry {seq} where {expected} was due")
        body = entry["body"].encode()
        if audit.entry_hash(prev, seq, body) != entry.get("hash"):
            raise CasePackInvalid(
                member, "chain link", f"entry {seq}: its hash does not follow from its body and the previous entry"
            )
        fields = _load(member, body)
        data = fields.get("data") if isinstance(fields, dict) else None
        if isinstance(data, dict) and data.get("execution_id") == execution_id:
            started |= fields.get("kind") == "execution.started"
            completed |= fields.get("kind") == "execution.completed"
        prev, expected, last = str(entry["hash"]), seq + 1, (seq, str(entry["hash"]))
    if last is None:
        raise CasePackInvalid(member, "entries", "the audit slice is empty")
    try:
        checkpoint = audit.Checkpoint.from_dict(_load("checkpoint.json", members["checkpoint.json"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise CasePackInvalid("checkpoint.json", "format", str(exc)) from None
    if not checkpoint.verify(server):
        raise CasePackInvalid("checkpoint.json", "signature", "not signed by the server key")
    if (checkpoint.seq, checkpoint.hash) != last:
        raise CasePackInvalid(
            member,
            "checkpoint",
            f"the slice ends at entry {last[0]}, the signed checkpoint at {checkpoint.seq} (truncated?)",
        )
    if not started or not completed:
        raise CasePackInvalid(
            member, "coverage", "the slice does not hold the execution's started and completed entries"
        )
    return last[0] - first + 1
