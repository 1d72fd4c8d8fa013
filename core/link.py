"""The agent's side of the wire: its Ed25519 identity, signed requests (register, heartbeat,
acknowledge, deregister, open the push stream), and checking that what answers is the control plane.

- Identity: an agent keeps its key in a file (``agent_key_path``), so a restarted agent resumes its
  name with no operator step; the registration is signed with it (proof of possession).
- The server's key is pinned: the one configured (``server_key=`` / ``M99_SERVER_KEY``), else the
  first one this process saw at that URL (and, for one link, the first it saw anywhere: every replica
  of a control plane shares its key).  Another key answering later is refused (``ServerKeyMismatch``):
  the agent then fails closed at its lease and never takes that server's word for a restore.
- Several control-plane URLs (replicas): requests go to the current one and fail over to the next.

Each signed request carries a strictly increasing sequence number and a timestamp; the server rejects
forged, replayed and stale ones.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import resolve_data_dir
from .crypto import SigningKey, VerifyKey
from .errors import ConfigError, ControlPlaneError, ControlPlaneUnreachable, M99Error
from .http import httpx, request, verify_for
from .protocol import document_signature_ok, request_message, sign_request, verify_event

__all__ = [
    "ControlLink",
    "ServerKeyMismatch",
    "agent_key_path",
    "forget_server_keys",
    "pinned_server_key",
    "split_urls",
    "trust_server_key",
]


class ServerKeyMismatch(ControlPlaneError):
    """The control plane answered with a key other than the pinned one: it is not trusted."""


def split_urls(url: str | Sequence[str]) -> list[str]:
    """``"http://a:8099,http://b:8099"`` or a list of URLs, as a list (at least one)."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [u.strip().rstrip("/") for u in parts if u and u.strip()]
    if not urls:
        raise ConfigError("no control-plane URL given")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise ConfigError(f"bad control-plane URL {u!r}: it must start with http:// or https://")
    return urls


def agent_key_path(name: str, key_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where an agent named ``name`` keeps its key on this machine (``$M99_KEY_DIR``, else the data
    dir's ``agent-keys``).  Names may hold ``/`` and ``:``: the file is named by a hash of it."""
    base = Path(key_dir or os.environ.get("M99_KEY_DIR") or resolve_data_dir() / "agent-keys")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    return base / f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.key"


# -- the server keys this process trusts ----------------------------------------------------------------

_trusted_lock = threading.Lock()
_trusted: dict[str, VerifyKey] = {}  # control-plane URL -> the key first seen there


def pinned_server_key(url: str) -> VerifyKey | None:
    """The server key this process has pinned for ``url`` (the first one seen there)."""
    return _trusted.get(url.rstrip("/"))


def trust_server_key(url: str, key: VerifyKey) -> None:
    """Pin ``key`` for ``url`` now: a control plane started in this very process (``EmbeddedControlPlane``)
    is trusted by construction."""
    with _trusted_lock:
        _trusted[url.rstrip("/")] = key


def forget_server_keys() -> None:
    """Drop every pinned key (tests that start many control planes on reused ports)."""
    with _trusted_lock:
        _trusted.clear()


def _trust(url: str, key: VerifyKey, expected: VerifyKey | None) -> VerifyKey:
    """Pin ``key`` (what ``url`` answered with), or refuse it if another key is expected there."""
    with _trusted_lock:
        expected = expected or _trusted.get(url)
        if expected is not None and expected.raw != key.raw:
            raise ServerKeyMismatch(
                f"the control plane at {url} answered with a key that is not the pinned one: refusing to trust it "
                "(set M99_SERVER_KEY to the key `m99 serve` prints, if the server's key really changed)",
                code="server_key",
            )
        _trusted.setdefault(url, key)
        return key


def _configured_key(server_public_key: str | None) -> VerifyKey | None:
    text = server_public_key or os.environ.get("M99_SERVER_KEY")
    if not text:
        return None
    try:
        return VerifyKey.from_b64(text.strip())
    except ValueError as exc:
        raise ConfigError(f"bad server key {text!r}: {exc}") from None


# -- requests ------------------------------------------------------------------------------------------


class ControlLink:
    """One agent identity talking to one control plane (one URL, or several replicas)."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        key: SigningKey | None = None,
        key_file: str | Path | None = None,
        timeout: float = 10.0,
        server_public_key: str | None = None,
        enrol_token: str | None = None,
    ) -> None:
        self.urls = split_urls(url)
        self._current = 0
        if key is None and key_file is not None:
            try:
                key = SigningKey.load_or_create(Path(key_file))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot use the agent key {key_file}: {exc}") from None
        self.key = key or SigningKey.generate()
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self._clients: dict[str, httpx.Client] = {}
        self.agent_id: str | None = None
        self.name: str | None = None
        self.registration: dict[str, Any] = {}
        self._configured = _configured_key(server_public_key)
        self._server_key: VerifyKey | None = self._configured
        self.enrol_token = enrol_token or os.environ.get("M99_ENROL_TOKEN") or None
        self.epoch = ""
        self._seq = 0
        # _seq_lock guards the counter and signing only (microseconds), so the push thread can sign
        # acks while a heartbeat is in flight; _send_lock keeps heartbeats and deregistration in order.
        self._seq_lock = threading.Lock()
        self._send_lock = threading.Lock()

    # -- where --------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.urls[self._current]

    @property
    def http(self) -> httpx.Client:
        return self._client(self.url)

    def _client(self, url: str) -> httpx.Client:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = httpx.Client(base_url=url, timeout=self.timeout, verify=verify_for(url))
        return client

    @property
    def host_ports(self) -> list[tuple[str, int]]:
        out = []
        for url in self.urls:
            parsed = httpx.URL(url)
            out.append((parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)))
        return out

    def failover(self) -> None:
        """Use the next control-plane URL from now on (the current one did not answer)."""
        if len(self.urls) > 1:
            self._current = (self._current + 1) % len(self.urls)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The request on the current URL, then on each other one if it cannot be reached."""
        last: ControlPlaneUnreachable | None = None
        for _ in self.urls:
            try:
                return request(self.http, method, path, **kwargs)
            except ControlPlaneUnreachable as exc:
                last = exc
                self.failover()
        assert last is not None
        raise last

    # -- requests -----------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        kind: str = "agent",
        *,
        frameworks: Sequence[str] = (),
        framework: str | None = None,
        read_only_tools: list[str] | None = None,
        credentials: list[dict[str, str]] | None = None,
        metadata: dict[str, Any] | None = None,
        policy: str | None = None,
    ) -> dict[str, Any]:
        body = self.registration_body(
            name,
            kind,
            frameworks=frameworks,
            framework=framework,
            read_only_tools=read_only_tools,
            credentials=credentials,
            metadata=metadata,
            policy=policy,
        )
        headers = {"Authorization": f"Bearer {self.enrol_token}"} if self.enrol_token else {}
        answer: dict[str, Any] = self._call("POST", "/api/agents/register", json=body, headers=headers)
        try:
            server_key = VerifyKey.from_b64(str(answer["server_public_key"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ControlPlaneError(f"malformed registration answer: {exc}") from None
        self._server_key = _trust(self.url, server_key, self._server_key)
        with self._seq_lock:
            self.agent_id, self.name, self.registration = answer["agent_id"], name, answer
            self._seq = 0
        return answer

    def registration_body(
        self,
        name: str,
        kind: str = "agent",
        *,
        frameworks: Sequence[str] = (),
        framework: str | None = None,
        read_only_tools: list[str] | None = None,
        credentials: list[dict[str, str]] | None = None,
        metadata: dict[str, Any] | None = None,
        policy: str | None = None,
    ) -> dict[str, Any]:
        """A registration request, signed with this agent's key (proof that it holds the key)."""
        body: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "frameworks": sorted(set(frameworks) | ({framework} if framework else set())),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "public_key": self.key.public_b64,
            "read_only_tools": sorted(read_only_tools or ()),
            "credentials": credentials or [],
            "metadata": metadata or {},
            "ts": time.time(),
        }
        if policy:  # only when there is one: a control plane that predates policies still registers it
            body["policy"] = policy
        return sign_request(self.key, "register", name, body)

    def _signed(self, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._seq_lock:
            agent_id = self.agent_id
            if agent_id is None:
                raise M99Error("not registered: call register() first")
            self._seq += 1
            body: dict[str, Any] = {"seq": self._seq, "ts": time.time(), **(extra or {})}
            return sign_request(self.key, kind, agent_id, body)

    def send_signed(self, kind: str, path: str, extra: dict[str, Any] | None = None) -> Any:
        # One signed request at a time, so sequence numbers reach the server in order.
        with self._send_lock:
            body = self._signed(kind, extra)
            return self._call("POST", f"/api/agents/{self.agent_id}/{path}", json=body)

    def send_signed_once(self, kind: str, path: str, extra: dict[str, Any], *, timeout: float) -> Any:
        """A signed request that is not ordered with the others (not behind ``_send_lock``: a heartbeat
        never waits on it, nor it on one; the server checks its sequence on its own), sent to the current
        URL only, so it takes at most ``timeout``; an unreachable URL fails over for the next request."""
        body = self._signed(kind, extra)
        try:
            return request(self.http, "POST", f"/api/agents/{self.agent_id}/{path}", json=body, timeout=timeout)
        except ControlPlaneUnreachable:
            self.failover()
            raise

    def heartbeat(self, frameworks: Sequence[str] | None = None) -> dict[str, Any]:
        extra = {"frameworks": sorted(set(frameworks))} if frameworks is not None else None
        answer: dict[str, Any] = self.send_signed("heartbeat", "heartbeat", extra)
        return self.verify_state(answer["state"])

    def acknowledge(
        self, version: int, applied_at: float, *, receipt: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """One acknowledgement, sent at once.  Not behind ``_send_lock``: acks have their own sequence
        on the server, and a terminating Guard must not wait for a heartbeat in flight."""
        body = self.signed_ack(version, applied_at, receipt)
        body.pop("agent_id")
        extra = {} if timeout is None else {"timeout": timeout}
        return self._call("POST", f"/api/agents/{self.agent_id}/ack", json=body, **extra)

    def signed_ack(self, version: int, applied_at: float, receipt: dict[str, Any] | None = None) -> dict[str, Any]:
        """An acknowledgement for ``POST /api/acks``, which takes those of many agents at once."""
        fields: dict[str, Any] = {"version": version, "applied_at": applied_at}
        if receipt:
            fields["receipt"] = receipt
        return {"agent_id": self.agent_id, **self._signed("ack", fields)}

    def deregister(self, *, timeout: float | None = None) -> Any:
        with self._send_lock:
            body = self._signed("deregister")
            extra = {} if timeout is None else {"timeout": timeout}
            return self._call("POST", f"/api/agents/{self.agent_id}/deregister", json=body, **extra)

    def events_headers(self) -> dict[str, str]:
        """The signed headers that open this agent's push stream (a newer stream replaces an older)."""
        agent_id = self.agent_id
        if agent_id is None:
            raise M99Error("not registered: call register() first")
        body: dict[str, Any] = {"ts": time.time()}
        signature = self.key.sign(request_message("events", agent_id, body))
        return {"X-M99-Timestamp": repr(body["ts"]), "X-M99-Signature": signature}

    def fetch_state(self) -> dict[str, Any]:
        answer = self._call("GET", f"/api/agents/{self.agent_id}/state")
        return self.verify_state(answer)

    # -- what comes back ----------------------------------------------------------------------------
    def verify_state(self, signed: dict[str, Any]) -> dict[str, Any]:
        """The state document, if the pinned server key signed it and it is about us."""
        if self._server_key is None:
            raise ControlPlaneError("no server key to check the state document with: register first")
        doc = document_signature_ok(self._server_key, signed)
        if doc is None:
            raise ControlPlaneError("state document with a bad signature (or malformed): ignored")
        if doc.get("agent_id") != self.agent_id:
            raise ControlPlaneError("state document for another agent: ignored")
        return doc

    def verify_event(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A pushed event, if the pinned server key signed it; None for a forged one."""
        return None if self._server_key is None else verify_event(self._server_key, payload)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
