"""The one exception tree of M99.

    M99Error
    ├── ConfigError                      bad setting, unreadable data dir, missing token
    ├── AdapterUnavailable               a framework extra is not installed
    ├── ControlPlaneError                the control plane refused, or answered with an error
    │   ├── ControlPlaneUnreachable      no answer at all
    │   ├── BadRequest                   the request itself is wrong
    │   ├── NotAuthorised                outside the token's role
    │   │   └── Unauthenticated          no token, an unknown one, a bad signature
    │   ├── NotFound                     unknown agent, authorisation, execution, token
    │   ├── Conflict                     expired, consumed, disarmed, tombstoned, replayed…
    │   └── RateLimited                  too many requests from one source: retry later
    ├── AuditIntegrityError              the audit chain does not verify
    └── M99KillSwitchTriggered           the kill switch holds this agent (raised inside the agent)
        ├── ToolCallRefused              a tool call was refused (L3 freeze, L4 restriction)
        ├── ModelCallRefused             a model call was refused
        └── LeaseExpired                 the Guard lost the control plane for longer than its lease

Every class carries an ``exit_code`` the CLI uses.  The control plane raises these without any HTTP
status: its HTTP layer maps each class to one (``m99.server.errors``), and the clients map an answer
back to the class (``error_for_status``, which keeps the status it saw in ``http_status``).

``M99KillSwitchTriggered`` is an ordinary
``Exception`` on purpose: frameworks that must be *halted* harder get a ``BaseException``
from the adapters, never from here.
"""

from __future__ import annotations

from typing import Any


class M99Error(Exception):
    """Base of every error M99 raises."""

    exit_code = 1

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class ConfigError(M99Error):
    exit_code = 2


class AdapterUnavailable(M99Error):
    """A framework adapter was asked for but its framework is not importable."""

    exit_code = 2


class ControlPlaneError(M99Error):
    """``code`` is a stable machine-readable word (``tombstoned``, ``replayed``…) for clients."""

    exit_code = 3

    def __init__(self, message: str, *, code: str = "", detail: Any = None, http_status: int = 0) -> None:
        super().__init__(message, detail=detail)
        self.code = code
        self.http_status = http_status  # set on the client side: the status the answer carried


class ControlPlaneUnreachable(ControlPlaneError):
    exit_code = 4


class BadRequest(ControlPlaneError):
    exit_code = 5


class NotAuthorised(ControlPlaneError):
    exit_code = 6


class Unauthenticated(NotAuthorised):
    pass


class NotFound(ControlPlaneError):
    exit_code = 7


class Conflict(ControlPlaneError):
    exit_code = 8


class RateLimited(ControlPlaneError):
    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 1.0,
        code: str = "rate_limited",
        detail: Any = None,
        http_status: int = 0,
    ) -> None:
        super().__init__(message, code=code, detail=detail, http_status=http_status)
        self.retry_after = retry_after


class AuditIntegrityError(M99Error):
    exit_code = 9


class M99KillSwitchTriggered(M99Error):
    """The kill switch holds this agent: stop acting.

    ``level`` is the effective level (1-6) and ``reason`` says why (an execution, the dead
    man's switch, a lost lease).
    """

    exit_code = 10

    def __init__(self, message: str, *, level: int = 3, reason: str = "", agent: str = "") -> None:
        super().__init__(message)
        self.level = level
        self.reason = reason
        self.agent = agent


class ToolCallRefused(M99KillSwitchTriggered):
    def __init__(self, message: str, *, tool: str = "", level: int = 3, reason: str = "", agent: str = "") -> None:
        super().__init__(message, level=level, reason=reason, agent=agent)
        self.tool = tool


class ModelCallRefused(M99KillSwitchTriggered):
    pass


class LeaseExpired(M99KillSwitchTriggered):
    pass


def error_for_status(status_code: int, message: str, code: str = "", detail: Any = None) -> ControlPlaneError:
    """Map an HTTP error answer to the matching class."""
    cls: type[ControlPlaneError]
    if status_code == 401:
        cls = Unauthenticated
    elif status_code == 403:
        cls = NotAuthorised
    elif status_code == 404:
        cls = NotFound
    elif status_code == 409:
        cls = Conflict
    elif status_code == 429:
        retry = detail.get("retry_after", 1.0) if isinstance(detail, dict) else 1.0
        return RateLimited(
            message,
            retry_after=float(retry or 1.0),
            code=code or "rate_limited",
            detail=detail,
            http_status=status_code,
        )
    elif 400 <= status_code < 500:
        cls = BadRequest
    elif status_code in (502, 503, 504):
        cls = ControlPlaneUnreachable
    else:
        cls = ControlPlaneError
    return cls(message, code=code, detail=detail, http_status=status_code)


def error_of_answer(status_code: int, data: Any, where: str) -> ControlPlaneError:
    """The error a non-2xx answer stands for: its JSON ``{"error": {...}}`` if it has one, else the
    status alone (``where``: the URL asked, for the message)."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return error_for_status(status_code, str(err.get("message")), str(err.get("code") or ""), err)
    return error_for_status(status_code, f"HTTP {status_code} from {where}")
