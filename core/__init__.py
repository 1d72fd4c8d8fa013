"""M99: an emergency stop for AI agents, enforced inside the agent frameworks.

The public API is listed in ``__all__``; the heavier parts (the server, the Guard, the
adapters) load on first use so that ``import m99`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AdapterUnavailable,
    AuditIntegrityError,
    BadRequest,
    ConfigError,
    Conflict,
    ControlPlaneError,
    ControlPlaneUnreachable,
    LeaseExpired,
    M99Error,
    M99KillSwitchTriggered,
    ModelCallRefused,
    NotAuthorised,
    NotFound,
    ToolCallRefused,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterUnavailable",
    "AuditIntegrityError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "ControlPlaneError",
    "ControlPlaneUnreachable",
    "EmbeddedControlPlane",
    "Guard",
    "LeaseExpired",
    "Level",
    "M99Client",
    "M99Error",
    "M99KillSwitchTriggered",
    "ModelCallRefused",
    "NotAuthorised",
    "NotFound",
    "OperatorClient",
    "Role",
    "Runtime",
    "Scope",
    "ToolCallRefused",
    "__version__",
    "init",
    "shutdown",
]

_LAZY = {
    "Level": "m99.levels",
    "Role": "m99.levels",
    "Scope": "m99.levels",
    "M99Client": "m99.client",
    "OperatorClient": "m99.operator",
    "Guard": "m99.guard",
    "EmbeddedControlPlane": "m99.server",
    "Runtime": "m99.runtime",
    "init": "m99.runtime",
    "shutdown": "m99.runtime",
}

if TYPE_CHECKING:
    from .client import M99Client
    from .guard import Guard
    from .levels import Level, Role, Scope
    from .operator import OperatorClient
    from .runtime import Runtime, init, shutdown
    from .server import EmbeddedControlPlane


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'm99' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
