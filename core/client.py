"""Python clients of the control plane.

``M99Client`` is the seed SDK an agent uses (``register``, background heartbeats,
``check_status`` raising ``M99KillSwitchTriggered``); ``OperatorClient`` is what the CLI and
scripts use to arm, execute, disarm, restore and read the audit chain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import httpx

from .config import resolve_token, resolve_url
from .errors import ControlPlaneUnreachable, M99Error, NotAuthorised
from .guard import Guard
from .link import request, split_urls, tls_context
from .session import Session

log = logging.getLogger("m99.client")


class OperatorClient:
    """The operator's side of the REST API (token from --token, M99_TOKEN or the admin token file)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        data_dir: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.urls = split_urls(resolve_url(url))
        self.url = self.urls[0]
        self.token = resolve_token(token, data_dir)
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._timeout = timeout
        self.http = self._client(self.url)

    def _client(self, url: str) -> httpx.Client:
        verify = tls_context() if url.startswith("https://") else True
        return httpx.Client(base_url=url, headers=self._headers, timeout=self._timeout, verify=verify)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(len(self.urls)):
            try:
                return request(self.http, method, path, **kwargs)
            except ControlPlaneUnreachable:
                if attempt == len(self.urls) - 1:
                    raise
                self.http.close()  # another replica, then
                self.url, self.http = self.urls[attempt + 1], self._client(self.urls[attempt + 1])
            except NotAuthorised as exc:
                if not self.token:
                    raise NotAuthorised(
                        f"{exc.message}. No token found: pass --token, set M99_TOKEN, or point M99_DATA_DIR at "
                        "the data directory of `m99 serve`",
                        code=exc.code,
                        http_status=exc.http_status,
                    ) from None
                raise
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/health")
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/status")
        return result

    def agents(self, *, include_stopped: bool = False) -> list[dict[str, Any]]:
        params = {"all": "true"} if include_stopped else {}
        result: list[dict[str, Any]] = self._call("GET", "/api/agents", params=params)
        return result

    def agent(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/agents/{name}")
        return result

    def forget(self, name: str, *, by: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/agents/{name}/forget", json={"by": by, "reason": reason})
        return result

    def arm(
        self,
        by: str,
        reason: str,
        *,
        level: int = 3,
        scope: str = "global",
        window: float = 300,
        allow_empty: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"by": by, "reason": reason, "level": level, "scope": scope, "window": window}
        if allow_empty:
            body["allow_empty"] = True
        result: dict[str, Any] = self._call("POST", "/api/arm", json=body)
        return result

    def authorization(self, auth_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/authorizations/{auth_id}")
        return result

    def execute(self, auth_id: str, *, confirm: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"authorization_id": auth_id}
        if confirm is not None:
            body["confirm"] = confirm
        result: dict[str, Any] = self._call("POST", "/api/execute", json=body)
        return result

    def disarm(
        self, auth_id: str | None = None, *, every: bool = False, by: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {k: v for k, v in {"authorization_id": auth_id, "by": by, "reason": reason}.items() if v}
        if every:
            body["all"] = True
        result: dict[str, Any] = self._call("POST", "/api/disarm", json=body)
        return result

    def restore(self, scope: str, *, by: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/restore", json={"scope": scope, "by": by, "reason": reason})
        return result

    def lift(self, scope: str, *, by: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/lift", json={"scope": scope, "by": by, "reason": reason})
        return result

    def executions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/executions")
        return result

    def execution(self, execution_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/executions/{execution_id}")
        return result

    def audit_verify(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/audit/verify")
        return result

    def audit_export(self) -> Iterator[str]:
        with self.http.stream("GET", "/api/audit/export") as response:
            if not response.is_success:
                response.read()
                self._call("GET", "/api/audit/verify")  # raises the same error with its message
            yield from response.iter_lines()

    def create_token(self, name: str, role: str, **grants: Any) -> dict[str, Any]:
        body = {"name": name, "role": role, **{k: v for k, v in grants.items() if v not in (None, False)}}
        result: dict[str, Any] = self._call("POST", "/api/tokens", json=body)
        return result

    def anchor(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/audit/anchor")
        return result

    def tokens(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/tokens")
        return result

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/api/tokens/{token_id}")
        return result

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class M99Client:
    """The seed SDK, thin over a ``Guard`` and its ``Session``: register an agent, heartbeat
    in the background, and ``check_status()`` from memory (state is pushed, never polled).

    >>> client = M99Client("http://localhost:8099")
    >>> client.register("my-agent", "autonomous")
    >>> client.check_status()      # raises M99KillSwitchTriggered once the switch fires
    """

    def __init__(
        self,
        url: str | list[str] | None = None,
        *,
        key_file: str | None = None,
        server_key: str | None = None,
        enrol_token: str | None = None,
        **guard_options: Any,
    ) -> None:
        self.url = resolve_url(url if isinstance(url, str) or url is None else ",".join(url))
        self._key_file = key_file
        self._server_key = server_key
        self._enrol_token = enrol_token
        self._guard_options = guard_options
        self.guard: Guard | None = None
        self.session: Session | None = None

    @property
    def name(self) -> str | None:
        return self.guard.name if self.guard else None

    @property
    def agent_id(self) -> str | None:
        return self.session.link.agent_id if self.session else None

    def register(
        self,
        name: str,
        kind: str = "agent",
        *,
        framework: str | Iterable[str] | None = None,
        read_only_tools: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Register (blocking: a refusal raises here) and start background heartbeats and the push stream.
        The agent's key is kept in a file per name (``key_file=`` to choose it), so a restart resumes the
        same identity."""
        if self.session is not None:
            raise M99Error(f"this client already registered {self.name!r}; use one client per agent")
        guard = Guard(name, kind=kind, framework=framework, read_only_tools=set(read_only_tools), **self._guard_options)
        self.session = Session(
            guard, self.url, key_file=self._key_file, server_public_key=self._server_key, enrol_token=self._enrol_token
        ).start()
        self.guard = guard
        return self.session.link.registration

    def _require(self) -> Guard:
        if self.guard is None:
            raise M99Error("not registered: call register(name, kind) first")
        return self.guard

    def check_status(self) -> None:
        """Raise ``M99KillSwitchTriggered`` if the switch holds this agent (L3, L5, L6, or a lost lease)."""
        self._require().check_status()

    @property
    def level(self) -> int:
        return self._require().level

    def heartbeat(self) -> dict[str, Any]:
        """Send one heartbeat now (the session also sends them in the background)."""
        if self.session is None:
            raise M99Error("not registered: call register(name, kind) first")
        return self.session.heartbeat()

    def close(self) -> None:
        """Deregister and stop the background work; the client may ``register`` again afterwards."""
        session, self.session = self.session, None
        if session is not None:
            session.close()

    async def aclose(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.aclose()

    def __enter__(self) -> M99Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> M99Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
