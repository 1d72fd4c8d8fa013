"""``notify`` with ``channels``: delivered through the webhook sink configured on the server (a signed
JSON POST, Slack-compatible on request); with no sink, audited as not delivered, never dropped."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import m99
from m99 import network
from m99.control import Settings
from m99.crypto import VerifyKey
from m99.server import EmbeddedControlPlane

pytestmark = pytest.mark.timeout(60)

POLICY = """## TRIGGERS
consecutive_failures: 1
---
## ESCALATION
level_3_shutdown:
  action: full_stop
  notify: true
  channels:
    - email: ops@example.com
    - slack: "#ai-alerts"
"""


class Capture(BaseHTTPRequestHandler):
    got: list[tuple[bytes, str]] = []

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.got.append((data, self.headers.get("X-M99-Signature", "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[tuple[str, list[tuple[bytes, str]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    Capture.got = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Capture.got
    server.shutdown()


def _stop_by_policy(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.tools import tool

    (tmp_path / "KILLSWITCH.md").write_text(POLICY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("M99_POLICY", raising=False)

    @tool
    def flaky(x: str) -> str:
        """Fails."""
        raise ValueError("flaky")

    m99.init("notify-bot", url=url, exclude=["crewai", "autogen"])
    with pytest.raises(ValueError):
        flaky.invoke({"x": "1"})


def _kinds(admin: httpx.Client) -> list[str]:
    return [e.get("kind") or e.get("action") for e in admin.get("/api/audit", params={"limit": 500}).json()]


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_a_notifying_level_is_posted_signed_to_the_servers_webhook(
    fmt: str, sink: tuple[str, list[tuple[bytes, str]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, got = sink
    # The control plane runs inside the agent's process here, and a policy stop fires L3 (with L2's cut of
    # the process's network): let its webhook through, as a separate `m99 serve` needs no such thing.
    port = int(hook.split(":")[2].split("/")[0])
    network.allow_destination("127.0.0.1", port)
    with EmbeddedControlPlane(tmp_path / "cp", settings=Settings(webhook=hook, webhook_format=fmt)) as cp:
        try:
            _stop_by_policy(cp.url, tmp_path, monkeypatch)
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            m99.shutdown()
        network.disallow_destination("127.0.0.1", port)
        assert len(got) == 1
        data, signature = got[0]
        assert VerifyKey.from_b64(cp.control.key.public_b64).verify(data, signature)  # signed by the server key
        body = json.loads(data)
        fields = body["m99"] if fmt == "slack" else body
        if fmt == "slack":
            assert "notify-bot -> level_3_shutdown" in body["text"] and "#ai-alerts" in body["text"]
        assert fields["agent"] == "notify-bot" and fields["stage"] == "level_3_shutdown"
        assert {"kind": "email", "target": "ops@example.com"} in fields["channels"]
        with httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"}) as admin:
            deadline = time.monotonic() + 5
            while "policy.notified" not in _kinds(admin) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "policy.notified" in _kinds(admin)


def test_without_a_sink_the_notification_is_audited_as_not_delivered(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        _stop_by_policy(embedded.url, tmp_path, monkeypatch)
        deadline = time.monotonic() + 10
        while "policy.notify_undelivered" not in _kinds(admin) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        m99.shutdown()
    entry = next(
        e for e in admin.get("/api/audit", params={"limit": 500}).json()
        if (e.get("kind") or e.get("action")) == "policy.notify_undelivered"
    )  # fmt: skip
    assert {"kind": "slack", "target": "#ai-alerts"} in entry["data"]["channels"]
    assert "--webhook" in entry["data"]["reason"]
