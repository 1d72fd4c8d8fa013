"""Bad input gets a 4xx with a JSON error that says what is wrong, no stack trace, and no
state change."""

from __future__ import annotations

import httpx
import pytest

from m99.link import ControlLink
from m99.server import EmbeddedControlPlane


def snapshot(admin: httpx.Client) -> tuple[int, int, int]:
    status = admin.get("/api/status").json()
    return status["audit_head"]["seq"], len(admin.get("/api/authorizations").json()), status["agents_total"]


def assert_clean_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and err["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    for word in words:
        assert word in err["message"], err["message"]


CASES = [
    ("malformed json", "POST", "/api/arm", b'{"by": "a@b", "reason": ', 400, ["not valid JSON"]),
    (
        "unknown field",
        "POST",
        "/api/arm",
        {"by": "a@b", "reason": "r", "levle": 3},
        422,
        ["levle", "unknown field"],
    ),
    ("wrong type", "POST", "/api/arm", {"by": "a@b", "reason": "r", "level": "three"}, 422, ["level"]),
    ("level out of range", "POST", "/api/arm", {"by": "a@b", "reason": "r", "level": 9}, 422, ["level"]),
    (
        "bad scope",
        "POST",
        "/api/arm",
        {"by": "a@b", "reason": "r", "scope": "planet:earth"},
        400,
        ["bad scope"],
    ),
    ("empty by", "POST", "/api/arm", {"by": " ", "reason": "r"}, 400, ["--by"]),
    ("missing reason", "POST", "/api/arm", {"by": "a@b"}, 422, ["reason"]),
    ("bad window", "POST", "/api/arm", {"by": "a@b", "reason": "r", "window": 0}, 400, ["window"]),
    ("unknown authorisation", "POST", "/api/execute", {"authorization_id": "auth_nope"}, 404, ["auth_nope"]),
    ("unknown execution", "GET", "/api/executions/exe_nope", None, 404, ["exe_nope"]),
    ("unknown agent", "GET", "/api/agents/nobody", None, 404, ["nobody"]),
    ("unknown token", "DELETE", "/api/tokens/tok_nope", None, 404, ["tok_nope"]),
    ("bad role", "POST", "/api/tokens", {"name": "x", "role": "god"}, 400, ["god"]),
    (
        "restore bad scope",
        "POST",
        "/api/restore",
        {"scope": "agent:", "by": "a@b", "reason": "r"},
        400,
        ["scope"],
    ),
    (
        "register bad key",
        "POST",
        "/api/agents/register",
        {"name": "a", "public_key": "x" * 44, "ts": 1.0, "signature": "x"},
        400,
        ["public_key"],
    ),
    (
        "register bad name",
        "POST",
        "/api/agents/register",
        {"name": "a b", "public_key": "A" * 43 + "=", "ts": 1.0, "signature": "x"},
        400,
        ["name"],
    ),
    (
        "heartbeat unknown agent",
        "POST",
        "/api/agents/agt_nope/heartbeat",
        {"seq": 1, "ts": 1.0, "signature": "x"},
        404,
        ["agt_nope"],
    ),
    (
        "heartbeat wrong type",
        "POST",
        "/api/agents/agt_nope/heartbeat",
        {"seq": "1", "ts": 1.0, "signature": "x"},
        422,
        ["seq"],
    ),
    ("heartbeat malformed", "POST", "/api/agents/agt_nope/heartbeat", b"{nope", 400, ["JSON"]),
    ("not json at all", "POST", "/api/disarm", b"\x00\xff", 400, ["JSON"]),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    embedded: EmbeddedControlPlane,
    admin: httpx.Client,
    name: str,
    method: str,
    path: str,
    body: object,
    status: int,
    words: list[str],
) -> None:
    ControlLink(embedded.url).register("bystander")
    before = snapshot(admin)
    kwargs = (
        {"content": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, bytes)
        else ({"json": body} if body is not None else {})
    )
    r = admin.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert_clean_error(r, status, *words)
    after = snapshot(admin)
    # Refusals of note (an unknown authorisation) are audited; nothing else changes.
    assert after[1:] == before[1:]
    assert after[0] - before[0] <= 1


def test_oversized_body_is_refused(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    before = snapshot(admin)
    r = admin.post("/api/arm", json={"by": "a@b", "reason": "x" * 100_000})
    assert_clean_error(r, 413, "bytes")
    chunked = admin.post(
        "/api/arm",
        content=iter([b'{"by": "a@b", "reason": "', b"x" * 70_000, b'"}']),
        headers={"Content-Type": "application/json"},
    )
    assert_clean_error(chunked, 413)
    assert snapshot(admin) == before


def test_unknown_route_is_a_json_404(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    assert_clean_error(admin.get("/api/nothing-here"), 404)
