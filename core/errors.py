"""The one exception tree of M99.

    M99Error
    ├── ConfigError                      bad setting, unreadable data dir, missing token
    ├── AdapterUnavailable               a framework extra is not installed
    ├── ControlPlaneError                the control plane answered with an error
    │   ├── ControlPlaneUnreachable      no answer at all
    │   ├── BadRequest                   4xx: the request itself is wrong
    │   ├── NotAuthorised                401/403: missing token, or outside the token's role
    │   ├── NotFound                     404: unknown agent, authorisation, execution, token
    │   └── Conflict                     409: expired, consumed, disarmed, tombstoned…
    ├── AuditIntegrityError              the audit chain does not verify
    └── M99KillSwitchTriggered           the kill switch holds this agent (raised inside the agent)
        ├── ToolCallRefused              a tool call was refused (L3 freeze, L4 restriction)
        ├── ModelCallRefused             a model call was refused
        └── LeaseExpired                 the Guard lost the control plane for longer than its lease

Every class carries an ``exit_code`` the CLI uses.  ``M99KillSwitchTriggered`` is an ordinary
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
    exit_code = 3
    status = 500  # the HTTP status the server answers with when none is given

    def __init__(self, message: str, *, status_code: int = 0, code: str = "", detail: Any = None) -> None:
        super().__init__(message, detail=detail)
        self.status_code = status_code or self.status
        self.code = code


class ControlPlaneUnreachable(ControlPlaneError):
    exit_code = 4
    status = 503


class BadRequest(ControlPlaneError):
    status = 400
    exit_code = 5


class NotAuthorised(ControlPlaneError):
    status = 403
    exit_code = 6


class NotFound(ControlPlaneError):
    status = 404
    exit_code = 7


class Conflict(ControlPlaneError):
    status = 409
    exit_code = 8


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
    if status_code in (401, 403):
        cls = NotAuthorised
    elif status_code == 404:
        cls = NotFound
    elif status_code == 409:
        cls = Conflict
    elif 400 <= status_code < 500:
        cls = BadRequest
    else:
        cls = ControlPlaneError
    return cls(message, status_code=status_code, code=code, detail=detail)
