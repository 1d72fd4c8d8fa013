"""``OperatorClient``: the operators' side of the REST API, for the CLI and scripts — arm, execute,
disarm, restore, read executions and the audit chain.

It imports nothing of the agent side (the Guard, sessions, keys): the operator's command starts fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .config import resolve_token, resolve_url
from .errors import ControlPlaneUnreachable, NotAuthorised
from .wire import JsonClient

__all__ = ["OperatorClient"]


def _urls(value: str) -> list[str]:
    return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]


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
        self.urls = _urls(resolve_url(url))
        self.url = self.urls[0]
        self.token = resolve_token(token, data_dir)
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._timeout = timeout
        self.wire = self._client(self.url)

    def _client(self, url: str) -> JsonClient:
        return JsonClient(url, self._headers, self._timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(len(self.urls)):
            try:
                return self.wire.call(method, path, **kwargs)
            except ControlPlaneUnreachable:
                if attempt == len(self.urls) - 1:
                    raise
                self.wire.close()  # another replica, then
                self.url, self.wire = self.urls[attempt + 1], self._client(self.urls[attempt + 1])
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

    def policy(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """``m99 policy resume|escalate|override``: an act on an agent's KILLSWITCH.md."""
        result: dict[str, Any] = self._call("POST", f"/api/policy/{op}", json=body)
        return result

    def budgets(self, days: int = 2) -> dict[str, Any]:
        """``m99 policy budgets``: the fleet budgets of the last ``days`` UTC days."""
        result: dict[str, Any] = self._call("GET", "/api/policy/budgets", params={"days": days})
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

    def drill(self, scope: str, level: int, *, by: str, reason: str) -> dict[str, Any]:
        body = {"scope": scope, "level": level, "by": by, "reason": reason}
        result: dict[str, Any] = self._call("POST", "/api/drill", json=body)
        return result

    def drill_schedule(self, every_seconds: float, *, by: str) -> dict[str, Any]:
        body = {"every_seconds": every_seconds, "by": by}
        result: dict[str, Any] = self._call("POST", "/api/drills/schedule", json=body)
        return result

    def breakglass_create(self, *, by: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/breakglass", json={"by": by})
        return result

    def breakglass_ack(self, token_id: str, *, by: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/breakglass/ack", json={"token_id": token_id, "by": by})
        return result

    def casepack(self, execution_id: str) -> bytes:
        """The bytes of an execution's case pack."""
        return self.wire.raw("GET", f"/api/executions/{execution_id}/casepack")

    def evidence(self, execution_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/api/executions/{execution_id}/evidence")
        return result

    def audit_verify(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/audit/verify")
        return result

    def audit_export(self) -> Iterator[str]:
        yield from self.wire.lines("/api/audit/export")

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
        self.wire.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
