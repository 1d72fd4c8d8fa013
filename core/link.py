"""The agent's side of the wire: its Ed25519 identity, signed requests (register, heartbeat,
acknowledge, deregister) and checking that state documents really come from the server.

Each signed request carries a strictly increasing sequence number and a timestamp; the
server rejects forged, replayed and stale ones.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .crypto import SigningKey, VerifyKey, canonical_json
from .errors import ControlPlaneError, ControlPlaneUnreachable, M99Error, error_for_status


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one default TLS context of the process, shared by every client of the control plane.

    Building one loads the CA bundle (20-180 ms measured here); a process with one Guard per framework
    agent would otherwise pay that twice per agent at registration.
    """
    return httpx.create_ssl_context()


def raise_for_answer(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer, or the matching ``ControlPlaneError``."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        return data
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        raise error_for_status(response.status_code, str(err.get("message")), str(err.get("code") or ""), err)
    raise error_for_status(response.status_code, f"HTTP {response.status_code} from {response.request.url}")


def request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise ControlPlaneUnreachable(
            f"cannot reach the control plane at {client.base_url}: {exc.__class__.__name__}"
            f"{': ' + str(exc) if str(exc) else ''}. Is `m99 serve` running?"
        ) from None
    return raise_for_answer(response)


def sign_event(key: SigningKey, event: dict[str, Any]) -> bytes:
    """A pushed event as the control plane sends it: the event and its signature, canonical JSON."""
    return canonical_json({"event": event, "signature": key.sign(canonical_json(event))})


class ControlLink:
    """One agent identity talking to one control plane."""

    def __init__(
        self,
        url: str,
        *,
        key: SigningKey | None = None,
        key_file: str | Path | None = None,
        timeout: float = 10.0,
        server_public_key: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if key is None and key_file is not None:
            key = SigningKey.load_or_create(Path(key_file))
        self.key = key or SigningKey.generate()
        self.http = httpx.Client(base_url=self.url, timeout=timeout, verify=tls_context())
        self.agent_id: str | None = None
        self.name: str | None = None
        self.registration: dict[str, Any] = {}
        self._pinned = VerifyKey.from_b64(server_public_key) if server_public_key else None
        self._server_key: VerifyKey | None = self._pinned
        self._seq = 0
        # _seq_lock guards the counter and signing only (microseconds), so the push thread can sign
        # acks while a heartbeat is in flight; _send_lock keeps heartbeats and deregistration in order.
        self._seq_lock = threading.Lock()
        self._send_lock = threading.Lock()

    @property
    def host_port(self) -> tuple[str, int]:
        parsed = httpx.URL(self.url)
        return parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)

    def register(
        self,
        name: str,
        kind: str = "agent",
        *,
        framework: str | None = None,
        read_only_tools: list[str] | None = None,
        credentials: list[dict[str, str]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "kind": kind,
            "framework": framework,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "public_key": self.key.public_b64,
            "read_only_tools": sorted(read_only_tools or ()),
            "credentials": credentials or [],
            "metadata": metadata or {},
        }
        answer: dict[str, Any] = request(self.http, "POST", "/api/agents/register", json=body)
        server_key = VerifyKey.from_b64(answer["server_public_key"])
        if self._pinned is not None and server_key.raw != self._pinned.raw:
            raise ControlPlaneError("the control plane's key is not the pinned one: refusing to trust it")
        self._server_key = server_key
        self.agent_id, self.name, self.registration = answer["agent_id"], name, answer
        self._seq = 0
        return answer

    def _signed(self, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        agent_id = self.agent_id
        if agent_id is None:
            raise M99Error("not registered: call register() first")
        with self._seq_lock:
            self._seq += 1
            body: dict[str, Any] = {"seq": self._seq, "ts": time.time(), **(extra or {})}
            message = canonical_json({"type": kind, "agent_id": agent_id, **body})
            body["signature"] = self.key.sign(message)
        return body

    def send_signed(self, kind: str, path: str, extra: dict[str, Any] | None = None) -> Any:
        # One signed request at a time, so sequence numbers reach the server in order.
        with self._send_lock:
            body = self._signed(kind, extra)
            return request(self.http, "POST", f"/api/agents/{self.agent_id}/{path}", json=body)

    def heartbeat(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.send_signed("heartbeat", "heartbeat")
        return self.verify_state(answer["state"])

    def acknowledge(self, version: int, applied_at: float, *, timeout: float | None = None) -> Any:
        """One acknowledgement, sent at once.  Not behind ``_send_lock``: acks have their own sequence
        on the server, and a terminating Guard must not wait for a heartbeat in flight."""
        body = self._signed("ack", {"version": version, "applied_at": applied_at})
        extra = {} if timeout is None else {"timeout": timeout}
        return request(self.http, "POST", f"/api/agents/{self.agent_id}/ack", json=body, **extra)

    def signed_ack(self, version: int, applied_at: float) -> dict[str, Any]:
        """An acknowledgement for ``POST /api/acks``, which takes those of many agents at once."""
        return {"agent_id": self.agent_id, **self._signed("ack", {"version": version, "applied_at": applied_at})}

    def deregister(self) -> Any:
        return self.send_signed("deregister", "deregister")

    def fetch_state(self) -> dict[str, Any]:
        answer = request(self.http, "GET", f"/api/agents/{self.agent_id}/state")
        return self.verify_state(answer)

    def verify_state(self, signed: dict[str, Any]) -> dict[str, Any]:
        """The state document, if the server's signature on it is good and it is about us."""
        doc = signed.get("document") if isinstance(signed, dict) else None
        if not isinstance(doc, dict) or not self._server_key:
            raise ControlPlaneError("malformed state document from the control plane")
        if not self._server_key.verify(canonical_json(doc), str(signed.get("signature", ""))):
            raise ControlPlaneError("state document with a bad signature: ignored")
        if doc.get("agent_id") != self.agent_id:
            raise ControlPlaneError("state document for another agent: ignored")
        return doc

    def verify_event(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A pushed event, if the server signed it; None for a forged one."""
        event = payload.get("event")
        if not isinstance(event, dict) or not self._server_key:
            return None
        if not self._server_key.verify(canonical_json(event), str(payload.get("signature", ""))):
            return None
        return event

    def close(self) -> None:
        self.http.close()
