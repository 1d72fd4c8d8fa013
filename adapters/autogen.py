"""AutoGen (agentchat 0.7) adapter: ``install()`` patches ``AssistantAgent``'s tool, model and inbox
seams; per-object variants wrap a workbench or a model client, intercept a team runtime's messages
and end a team (``M99Termination``).  Nothing here ever cancels or raises into a running tool.

Importing this module imports no AutoGen; without it installed, ``install()`` and every class and
function here raise ``AdapterUnavailable`` naming ``pip install 'm99[autogen]'``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ._common import GuardSource
from ._exports import CLASS, FUNCTION, Exports

if TYPE_CHECKING:
    from ._autogen_wrappers import (
        GuardedModelClient,
        GuardedWorkbench,
        M99InterventionHandler,
        M99Termination,
        protect_client,
    )

__all__ = [
    "WITHHELD",
    "GuardedModelClient",
    "GuardedWorkbench",
    "M99InterventionHandler",
    "M99Termination",
    "install",
    "installed",
    "protect_client",
    "uninstall",
]

# What an agent reads instead of another agent's message while messages are cut (L2).
WITHHELD = "[withheld by M99: agent-to-agent messages are cut (L2 SaaS disconnection)]"

_INSTALL = "_autogen_agents"
_exports = Exports(
    "autogen",
    "AutoGen",
    {
        "GuardedModelClient": ("_autogen_wrappers", CLASS),
        "GuardedWorkbench": ("_autogen_wrappers", CLASS),
        "M99InterventionHandler": ("_autogen_wrappers", CLASS),
        "M99Termination": ("_autogen_wrappers", CLASS),
        "protect_client": ("_autogen_wrappers", FUNCTION),
    },
)


def install(guard_resolver: GuardSource = None) -> None:
    """Patch ``AssistantAgent`` (existing agents included) and ``BaseGroupChat.run_stream`` to ask the
    Guard; idempotent.  Tool calls are refused with an error result (the run goes on, the model is told
    why), model calls of a halted agent are refused, and at L2 other agents' messages are withheld."""
    _exports.load(_INSTALL).install(guard_resolver)


def uninstall() -> None:
    """Put back exactly the attributes ``install`` replaced; idempotent; never imports AutoGen."""
    module = sys.modules.get(f"{__package__}.{_INSTALL}")
    if module is not None:
        module.uninstall()


def installed() -> bool:
    module = sys.modules.get(f"{__package__}.{_INSTALL}")
    return module is not None and bool(module.installed())


def __getattr__(name: str) -> Any:
    return _exports.get(name, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
