"""Bounded input everywhere: every byte from an agent or a client is hostile.  Each test reproduces a
finding of the hostile review: names that escape scopes, numbers that answer 500, floods that write the
audit chain at their own rate, bodies that never arrive, disarms that disarm too much, text that hides
what an operator reads, and secrets a reader could confirm."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from m99.control import Settings
from m99.crypto import SigningKey, canonical_json, fingerprint
from m99.link import ControlLink
from m99.protocol import request_message
from m99.server import EmbeddedControlPlane

from .servers import ServeProcess
from .test_session import fire, wait_for

BIG = 2**63


def kinds(admin: httpx.Client) -> list[str]:
    return [e["kind"] for e in admin.get("/api/audit", params={"limit": 1000}).json()]


def state(admin: httpx.Client) -> tuple[object, ...]:
    status = admin.get("/api/status").json()
    return (
        status["version"],
        len(status["agents"]),
        [a["id"] for a in admin.get("/api/authorizations").json()],
        [t["id"] for t in admin.get("/api/tokens").json()],
        [d["id"] for d in status["directives"]],
    )


def signed(link: ControlLink, kind: str, body: dict) -> bytes:
    """A request body signed by ``link`` as it is, even with values no client should send."""
    assert link.agent_id is not None
    body = {**body, "signature": link.key.sign(request_message(kind, link.agent_id, body))}
    return json.dumps(body).encode()


# -- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nl-agent\n", "tab\tagent", "nul\x00agent", " padded", "a" * 129])
def test_names_are_checked_end_to_end(embedded: EmbeddedControlPlane, admin: httpx.Client, name: str) -> None:
    before = state(admin)
    link = ControlLink(embedded.url)
    r = httpx.post(f"{embedded.url}/api/agents/register", json=link.registration_body(name))
    assert 400 <= r.status_code < 500 and "Traceback" not in r.text
    assert state(admin) == before


def test_a_scope_is_never_stripped_into_another_one(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    ControlLink(embedded.url).register("nl-agent", "worker")
    for scope in ("agent:nl-agent\n", "class:worker\n", " global", "global\n", ""):
        r = admin.post("/api/arm", json={"by": "a@example.com", "reason": "r", "scope": scope})
        assert 400 <= r.status_code < 500, (scope, r.text)
    assert admin.get("/api/authorizations").json() == []


# -- numbers ----------------------------------------------------------------------------------------------


def test_integers_over_63_bits_and_non_finite_floats_are_4xx(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    link = ControlLink(embedded.url)
    link.register("numbers", "worker")
    url = f"{embedded.url}/api/agents/{link.agent_id}"
    now = time.time()
    bodies = [
        ("heartbeat", signed(link, "heartbeat", {"seq": BIG, "ts": now})),
        ("heartbeat", signed(link, "heartbeat", {"seq": 1, "ts": now}).replace(str(now).encode(), b"NaN")),
        ("heartbeat", signed(link, "heartbeat", {"seq": 1, "ts": now}).replace(str(now).encode(), b"Infinity")),
        ("heartbeat", signed(link, "heartbeat", {"seq": 1, "ts": now}).replace(str(now).encode(), b"1e999")),
        ("ack", signed(link, "ack", {"seq": 1, "ts": now, "version": BIG, "applied_at": now})),
        (
            "ack",
            signed(link, "ack", {"seq": 1, "ts": now, "version": 1, "applied_at": now}).replace(
                b'"applied_at": ' + str(now).encode(), b'"applied_at": NaN'
            ),
        ),
        ("deregister", signed(link, "deregister", {"seq": BIG, "ts": now})),
    ]
    before = state(admin)
    for path, body in bodies:
        r = httpx.post(f"{url}/{path}", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, body, r.text)
    registration = link.registration_body("big-pid")
    registration["pid"] = BIG
    assert httpx.post(f"{embedded.url}/api/agents/register", json=registration).status_code == 422
    assert admin.get("/api/audit", params={"after": BIG}).status_code == 422
    assert admin.get("/api/audit", params={"after": "1e999"}).status_code == 422
    assert state(admin) == before
    # The refused ack consumed nothing: the next one with the first sequence number counts.
    result = fire(admin, scope="agent:numbers")
    ok = httpx.post(
        f"{url}/ack",
        content=signed(
            link, "ack", {"seq": 1, "ts": time.time(), "version": result["version"], "applied_at": time.time()}
        ),
        headers={"content-type": "application/json"},
    )
    assert ok.status_code == 200 and ok.json()["executions"] == [result["execution_id"]]


def test_the_dead_mans_switch_is_not_silenced_by_huge_sequence_numbers(tmp_path: Path) -> None:
    settings = Settings(heartbeat_interval=0.2, missed_heartbeats=3)
    with EmbeddedControlPlane(tmp_path / "d", settings=settings) as cp:
        silent, noisy = ControlLink(cp.url), ControlLink(cp.url)
        silent.register("silent")
        noisy.register("noisy")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            body = signed(noisy, "heartbeat", {"seq": BIG + 1, "ts": time.time()})
            r = httpx.post(f"{cp.url}/api/agents/{noisy.agent_id}/heartbeat", content=body)
            assert r.status_code == 422
            noisy.heartbeat()  # and good heartbeats from the same agent are still persisted
            time.sleep(0.05)
        assert silent.fetch_state()["level"] == 3  # the switch fired within its window
        assert noisy.fetch_state()["level"] == 0


def test_openapi_and_the_docs_are_served_offline(embedded: EmbeddedControlPlane) -> None:
    spec = httpx.get(f"{embedded.url}/openapi.json")
    assert spec.status_code == 200 and "/api/agents/{agent_id}/events" in spec.json()["paths"]
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{embedded.url}{page}")
        assert html.status_code == 200
        assert "https://" not in html.text and "http://" not in html.text  # no CDN, no web fonts
    for asset in ("/_docs/swagger-ui-bundle.js", "/_docs/swagger-ui.css", "/_docs/redoc.standalone.js"):
        assert httpx.get(f"{embedded.url}{asset}").status_code == 200


# -- floods -----------------------------------------------------------------------------------------------


def test_a_flood_of_forged_heartbeats_is_audited_folded(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    link = ControlLink(embedded.url)
    link.register("flooded")
    forger = SigningKey.generate()
    with httpx.Client(base_url=embedded.url) as client:
        for seq in range(1, 301):
            body = {"seq": seq, "ts": time.time()}
            body["signature"] = forger.sign(canonical_json({"type": "heartbeat", "agent_id": link.agent_id, **body}))
            assert client.post(f"/api/agents/{link.agent_id}/heartbeat", json=body).status_code == 401
    wait_for(lambda: "heartbeat.rejected" in kinds(admin))
    time.sleep(0.3)
    assert kinds(admin).count("heartbeat.rejected") == 1  # the rest is folded into the next entry's count
    metrics = httpx.get(f"{embedded.url}/metrics").text
    assert "m99_refusals_total 300.0" in metrics


def test_folded_refusals_are_written_with_their_count(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "d", settings=Settings(refusal_window=2.0)) as cp:
        admin = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        with httpx.Client(base_url=cp.url, headers={"Authorization": "Bearer m99_wrong"}) as wrong:
            for _ in range(20):
                assert wrong.get("/api/status").status_code == 401

        def refused() -> list[dict[str, Any]]:
            entries = admin.get("/api/audit", params={"limit": 1000}).json()
            return [e["data"] for e in entries if e["kind"] == "token.refused"]

        # every refusal is counted: the first of a window written at once, the rest folded into one entry
        wait_for(lambda: sum(d.get("repeated", 1) for d in refused()) == 20, timeout=10)
        entries = refused()
        assert len(entries) < 20 and all(d["source"] == "127.0.0.1" for d in entries)
        assert any(d.get("repeated", 0) > 1 for d in entries)
        admin.close()


def test_registrations_are_rate_limited_per_source(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "d", settings=Settings(register_rate=2, register_burst=5)) as cp:
        codes = []
        for i in range(12):
            body = ControlLink(cp.url).registration_body(f"junk-{i}")
            r = httpx.post(f"{cp.url}/api/agents/register", json=body)
            codes.append(r.status_code)
            if r.status_code == 429:
                assert float(r.headers["Retry-After"]) >= 1 and r.json()["error"]["retry_after"] > 0
        assert codes.count(200) <= 6 and 429 in codes
        admin = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        assert len(admin.get("/api/agents").json()) == codes.count(200)
        admin.close()


def _open_stream(url: str, link: ControlLink, headers: dict[str, str]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET /api/agents/{link.agent_id}/events HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    return sock


def test_one_push_stream_per_agent_and_only_the_agent_opens_it(embedded: EmbeddedControlPlane) -> None:
    link = ControlLink(embedded.url)
    link.register("streamer")
    unsigned = _open_stream(embedded.url, link, {})
    assert b" 422 " in unsigned.recv(4096).split(b"\r\n")[0]
    forged = _open_stream(embedded.url, link, {"X-M99-Timestamp": repr(time.time()), "X-M99-Signature": "AAAA"})
    assert b" 401 " in forged.recv(4096).split(b"\r\n")[0]
    first = _open_stream(embedded.url, link, link.events_headers())
    assert b" 200 " in first.recv(4096).split(b"\r\n")[0]
    time.sleep(0.05)
    second = _open_stream(embedded.url, link, link.events_headers())
    assert b" 200 " in second.recv(4096).split(b"\r\n")[0]
    # The newer stream replaced the older one, which the server ended.
    first.settimeout(5)
    rest = b""
    while chunk := first.recv(4096):
        rest += chunk
    assert rest.endswith(b"0\r\n\r\n")
    metric = httpx.get(f"{embedded.url}/metrics").text
    assert "m99_push_connections 1.0" in metric
    for sock in (unsigned, forged, first, second):
        sock.close()


def test_a_body_that_never_arrives_is_not_waited_for(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "d", settings=Settings(body_timeout=0.5)) as cp:
        port = cp.port
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"POST /api/arm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        answer = sock.recv(4096)
        assert b" 408 " in answer.split(b"\r\n")[0] and time.monotonic() - started < 5
        sock.close()
        assert httpx.get(f"{cp.url}/api/health").status_code == 200


# -- authority --------------------------------------------------------------------------------------------


def test_disarming_needs_the_role_of_the_level_and_disarm_all_is_explicit(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    ControlLink(embedded.url).register("target")
    heavy = admin.post(
        "/api/arm", json={"by": "boss@example.com", "reason": "r", "level": 5, "scope": "agent:target"}
    ).json()
    operator = admin.post("/api/tokens", json={"name": "ops", "role": "operator"}).json()["token"]
    with httpx.Client(base_url=embedded.url, headers={"Authorization": f"Bearer {operator}"}) as ops:
        refused = ops.post("/api/disarm", json={"authorization_id": heavy["id"]})
        assert refused.status_code == 403
        assert ops.post("/api/disarm", json={"all": True}).status_code == 403  # it would include the L5 one
    for body in (b"", b"null", b"{}", "\ufeff{}".encode()):
        r = admin.post("/api/disarm", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (body, r.text)
    assert admin.get(f"/api/authorizations/{heavy['id']}").json()["status"] == "armed"


@pytest.mark.parametrize("text", ["nul\x00byte", "rtl\u202eoverride", "esc\x1b[31mred", "new\nline"])
def test_by_and_reason_refuse_control_characters(
    embedded: EmbeddedControlPlane, admin: httpx.Client, text: str
) -> None:
    ControlLink(embedded.url).register("target")
    for body in ({"by": f"{text}@example.com", "reason": "r"}, {"by": "a@example.com", "reason": text}):
        r = admin.post("/api/arm", json=body)
        assert r.status_code == 400 and "control character" in r.json()["error"]["message"]
    assert admin.get("/api/authorizations").json() == []


def test_by_must_name_a_person(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    ControlLink(embedded.url).register("target")
    assert admin.post("/api/arm", json={"by": "someone", "reason": "r"}).status_code == 400
    assert admin.post("/api/arm", json={"by": "admin", "reason": "r"}).status_code == 200  # the token's name
    assert admin.post("/api/arm", json={"by": "ops@example.com", "reason": "r"}).status_code == 200


# -- secrets and files ------------------------------------------------------------------------------------


def test_credential_fingerprints_are_keyed(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    secret = "hunter2"  # low entropy: an unkeyed SHA-256 of it is found by guessing
    link = ControlLink(embedded.url)
    link.register("holder", credentials=[{"label": "DB_PASSWORD", "fingerprint": fingerprint(secret), "kind": "env"}])
    stored = admin.get("/api/agents/holder").json()["credentials"][0]["fingerprint"]
    assert stored.startswith("hmac-sha256:") and fingerprint(secret).split(":")[1] not in stored
    raw = (embedded.data_dir / "m99.db").read_bytes()
    assert fingerprint(secret).split(":")[1].encode() not in raw and secret.encode() not in raw


def test_serve_does_not_print_the_admin_token_and_leaves_an_existing_data_dir_alone(tmp_path: Path) -> None:
    data = tmp_path / "shared"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / ".audit-head.json.abc123.tmp").write_text("left by kill -9")
    server = ServeProcess(data).start()
    try:
        token = server.token
    finally:
        server.kill()
    output = server.proc.stdout.read() if server.proc and server.proc.stdout else ""
    assert token not in output and "admin.token" in output
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
    assert not list(data.glob(".audit-head.json.*.tmp"))
    fresh = tmp_path / "fresh"
    server = ServeProcess(fresh).start()
    server.kill()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_serve_on_a_busy_port_says_so_before_writing_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = ServeProcess(tmp_path / "data")
        server.port = busy.getsockname()[1]
        out = server.cli("serve", "--port", str(server.port))
    assert out.returncode == 2 and out.stderr.startswith("m99: error:") and "in use" in out.stderr
    assert "M99 control plane" not in out.stdout and not (tmp_path / "data" / "admin.token").exists()
