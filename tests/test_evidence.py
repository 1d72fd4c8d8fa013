"""Proof of a halt, end to end on a real control plane: signed receipts of positive checks, the agents'
evidence taken before the kill (with its side-effect ledger, never a secret) and the server's own
signed snapshot, an agent frozen (SIGSTOP) before the kill shown as not confirmed, and the case pack
that verifies offline and names every tampering."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from m99.crypto import SigningKey, sha256_hex
from m99.evidence.casepack import CasePackInvalid, verify
from m99.guard import Guard
from m99.server import EmbeddedControlPlane
from m99.session import Session

SECRET = "sk-test-VERY-SECRET-0123456789abcdef"
ENV_SECRET = "env-secret-value-9876543210"


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def fire(admin: httpx.Client, scope: str = "global", level: int = 3) -> dict[str, Any]:
    auth = admin.post("/api/arm", json={"by": "ops@example.com", "reason": "proof", "scope": scope, "level": level})
    result: dict[str, Any] = admin.post("/api/execute", json={"authorization_id": auth.json()["id"]}).json()
    return result


AGENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from m99.guard import Guard
    from m99.session import Session
    guard = Guard(sys.argv[2], kind="worker", framework="custom")
    Session(guard, sys.argv[1]).start()
    print("ready", flush=True)
    while True:
        time.sleep(0.2)
    """
)


@pytest.fixture
def halted(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two agents in this process (two frameworks), one in another process frozen with SIGSTOP before
    the kill, an L3 execution over all three."""
    os.environ["M99_TEST_ENV_SECRET"] = ENV_SECRET
    with EmbeddedControlPlane(tmp_path / "cp") as cp:
        admin = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        guards = [Guard("lc-agent", framework="langchain"), Guard("crew-agent", framework="crewai")]
        for guard in guards:
            guard.protect_secret(SECRET, label="openai")
            guard.protect_env("M99_TEST_ENV_SECRET", label="env")
        sessions = [Session(g, cp.url).start() for g in guards]
        done = guards[0].effects.started("send_email", {"to": "cfo@example.com", "api_key": SECRET})
        guards[0].record_tool_call("send_email", handle=done, result="queued: 1 message")
        guards[0].effects.started("transfer_funds", f"amount=100 token={SECRET}")  # in flight at the halt
        env = {**os.environ, "M99_AGENT_KEY_DIR": str(tmp_path / "keys")}
        frozen = subprocess.Popen(
            [sys.executable, "-c", AGENT_SCRIPT, cp.url, "frozen-agent"], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert frozen.stdout is not None and frozen.stdout.readline().strip() == "ready"
            frozen.send_signal(signal.SIGSTOP)
            result = fire(admin)
            execution_id = result["execution_id"]
            wait_for(lambda: admin.get(f"/api/executions/{execution_id}").json()["time_to_halt"]["confirmed"] == 2)
            wait_for(lambda: len(admin.get(f"/api/executions/{execution_id}/evidence").json()) == 3)
            yield {"cp": cp, "admin": admin, "id": execution_id, "guards": guards, "tmp": tmp_path}
        finally:
            frozen.send_signal(signal.SIGCONT)
            frozen.kill()
            frozen.wait(10)
            for s in sessions:
                s.close()
            admin.close()
            os.environ.pop("M99_TEST_ENV_SECRET", None)


def test_receipts_confirm_the_halt_and_a_frozen_agent_is_not_confirmed(halted: dict[str, Any]) -> None:
    admin, execution_id = halted["admin"], halted["id"]
    halt = admin.get(f"/api/executions/{execution_id}").json()["time_to_halt"]
    assert set(halt["per_agent"]) == {"lc-agent", "crew-agent"}
    assert halt["not_confirmed"] == ["frozen-agent"]
    assert "not heard from since the kill" in halt["not_confirmed_why"]["frozen-agent"]
    receipt = halt["receipts"]["lc-agent"]
    assert receipt["level"] == 3 and receipt["tools_refused"] is True and receipt["connections_refused"] is True
    assert receipt["credentials_revoked"] == receipt["credentials_protected"] == 2
    assert all(fp.startswith("hmac-sha256:") for fp in receipt["credential_fingerprints"])
    status = admin.get("/api/status").json()
    mine = next(h for h in status["halts"] if h["id"] == execution_id)
    assert mine["confirmed"] == 2 and mine["not_confirmed"] == ["frozen-agent"]


def test_m99_status_and_executions_say_not_confirmed(halted: dict[str, Any]) -> None:
    cp = halted["cp"]
    env = {**os.environ, "M99_URL": cp.url, "M99_TOKEN": cp.token}
    shown = subprocess.run(
        [sys.executable, "-m", "m99.cli", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "NOT confirmed" in shown.stdout and "frozen-agent" in shown.stdout
    one = subprocess.run(
        [sys.executable, "-m", "m99.cli", "executions", halted["id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "NOT confirmed" in one.stdout and "frozen-agent" in one.stdout and "lc-agent" in one.stdout


def test_evidence_holds_the_ledger_and_no_secret(halted: dict[str, Any]) -> None:
    admin, execution_id = halted["admin"], halted["id"]
    kept = admin.get(f"/api/executions/{execution_id}/evidence").json()
    assert sorted((e["kind"], e["agent"]) for e in kept) == [
        ("agent", "crew-agent"),
        ("agent", "lc-agent"),
        ("server", None),
    ]
    agent = next(e for e in kept if e["agent"] == "lc-agent")["signed"]["evidence"]
    ledger = agent["side_effects"]
    assert [c["tool"] for c in ledger["completed"]] == ["send_email"]
    assert ledger["completed"][0]["result_size"] == len("queued: 1 message")
    assert ledger["completed"][0]["started_at"] <= ledger["completed"][0]["ended_at"]
    assert [c["tool"] for c in ledger["in_flight"]] == ["transfer_funds"]
    assert "cfo@example.com" in ledger["completed"][0]["arguments"]
    assert agent["level_before"] == 0 and agent["level"] == 3
    server = next(e for e in kept if e["kind"] == "server")["signed"]["document"]
    assert server["authorization"]["armed_by"] == "ops@example.com"
    assert {a["name"] for a in server["agents"]} == {"lc-agent", "crew-agent", "frozen-agent"}
    assert all("last_heartbeat" in a and "lease_expires" in a for a in server["agents"])
    everything = json.dumps(kept) + admin.get(f"/api/executions/{execution_id}/casepack").content.hex()
    pack = admin.get(f"/api/executions/{execution_id}/casepack").content
    with zipfile.ZipFile(io.BytesIO(pack)) as zf:
        everything += "".join(zf.read(n).decode() for n in zf.namelist())
    for secret in (SECRET, ENV_SECRET, sha256_hex(SECRET), halted["cp"].token):
        assert secret not in everything


def test_evidence_from_a_forger_is_refused(halted: dict[str, Any]) -> None:
    admin, execution_id = halted["admin"], halted["id"]
    session_guard = halted["guards"][1]
    assert session_guard.captured is not None
    forged = {
        "agent_id": "agt_nonexistent",
        "ts": time.time(),
        "evidence": {"type": "agent.evidence", "agent": "crew-agent", "execution_ids": [execution_id]},
        "signature": SigningKey.generate().sign(b"x"),
    }
    answer = admin.post("/api/evidence", json={"items": [forged]}).json()
    assert answer["results"][0]["ok"] is False
    too_big = admin.post("/api/evidence", json={"items": [forged] * 65})
    assert too_big.status_code == 422


# -- the case pack --------------------------------------------------------------------------------------


def _members(pack: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(pack)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _resign(members: dict[str, bytes], key: SigningKey) -> dict[str, bytes]:
    """What a forger holding ``key`` would do: fix the manifest's hashes and sign it again."""
    manifest = json.loads(members["manifest.json"])
    manifest["members"] = {n: sha256_hex(d) for n, d in members.items() if n not in ("manifest.json", "manifest.sig")}
    members["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    members["manifest.sig"] = key.sign(members["manifest.json"]).encode()
    return members


def _invalid(pack: bytes, **kw: Any) -> CasePackInvalid:
    with pytest.raises(CasePackInvalid) as caught:
        verify(pack, **kw)
    return caught.value


def test_the_case_pack_verifies_offline_and_names_each_tampering(halted: dict[str, Any]) -> None:
    cp, admin, execution_id = halted["cp"], halted["admin"], halted["id"]
    pack = admin.get(f"/api/executions/{execution_id}/casepack").content
    report = verify(pack, public_key=cp.server_key)
    assert sorted(report.confirmed) == ["crew-agent", "lc-agent"]
    assert list(report.not_confirmed) == ["frozen-agent"] and not report.within_slo
    assert sorted(report.evidence) == ["crew-agent", "lc-agent"] and report.audit_entries >= 5

    members = _members(pack)
    changed = dict(members)
    changed["execution.json"] = members["execution.json"].replace(b"frozen-agent", b"frozen-agenT")
    assert (_invalid(_zip(changed)).member, _invalid(_zip(changed)).check) == ("execution.json", "hash")

    removed = {n: d for n, d in members.items() if n != "receipts.json"}
    assert (_invalid(_zip(removed)).member, _invalid(_zip(removed)).check) == ("receipts.json", "present")

    added = {**members, "evidence/intruder.json": b"{}"}
    assert (_invalid(_zip(added)).member, _invalid(_zip(added)).check) == ("evidence/intruder.json", "listed")

    other = SigningKey.generate()
    swapped = dict(members)
    keys = json.loads(members["keys.json"])
    keys["server"] = other.public_b64
    swapped["keys.json"] = json.dumps(keys).encode()
    manifest = json.loads(members["manifest.json"])
    manifest["server_public_key"] = other.public_b64
    swapped["manifest.json"] = json.dumps(manifest).encode()
    swapped = _resign(swapped, other)
    assert (_invalid(_zip(swapped)).member, _invalid(_zip(swapped)).check) == ("server_snapshot.json", "signature")
    pinned = _invalid(_zip(swapped), public_key=cp.server_key)
    assert (pinned.member, pinned.check) == ("keys.json", "pinned key")

    lines = members["audit.jsonl"].splitlines(keepends=True)
    truncated = {**members, "audit.jsonl": b"".join(lines[:-1])}
    assert (_invalid(_zip(truncated)).member, _invalid(_zip(truncated)).check) == ("audit.jsonl", "hash")
    # Even re-signed with the server's own key, a truncated slice no longer meets its signed checkpoint.
    real = SigningKey.load(halted["tmp"] / "cp" / "server.key")
    resigned = _resign(dict(truncated), real)
    assert (_invalid(_zip(resigned)).member, _invalid(_zip(resigned)).check) == ("audit.jsonl", "checkpoint")
    edited = {**members, "audit.jsonl": members["audit.jsonl"].replace(b"proof", b"proox", 1)}
    edited = _resign(edited, real)
    assert (_invalid(_zip(edited)).member, _invalid(_zip(edited)).check) == ("audit.jsonl", "chain link")

    for offset in range(0, len(pack), max(1, len(pack) // 40)):  # a changed byte anywhere
        flipped = bytearray(pack)
        flipped[offset] ^= 0x01
        with pytest.raises(CasePackInvalid):
            verify(bytes(flipped))


def test_m99_casepack_get_and_verify(halted: dict[str, Any], tmp_path: Path) -> None:
    cp = halted["cp"]
    env = {**os.environ, "M99_URL": cp.url, "M99_TOKEN": cp.token}
    out = tmp_path / "pack.zip"

    def m99(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "m99.cli", *args], env=env, capture_output=True, text=True, timeout=60
        )

    got = m99("casepack", "get", halted["id"], "-o", str(out))
    assert got.returncode == 0, got.stderr
    ok = m99("casepack", "verify", str(out), "--public-key", cp.server_key)
    assert ok.returncode == 0, ok.stderr
    assert "case pack valid" in ok.stdout and "2 of 3 agents confirmed" in ok.stdout
    assert "NOT confirmed  frozen-agent" in ok.stdout
    members = _members(out.read_bytes())
    members["receipts.json"] = members["receipts.json"].replace(b'"level":3', b'"level":2', 1)
    out.write_bytes(_zip(members))
    bad = m99("casepack", "verify", str(out))
    assert bad.returncode == 9 and "receipts.json: hash" in bad.stderr
