"""CrewAI adapter: ``install()`` puts a check in front of CrewAI's tool-hook dispatcher and registers
global before/after LLM-call hooks that consult the live Guard state; ``wrap_tool`` guards one tool.
A refused tool never runs; a halted agent's next model call raises ``M99RunStopped`` out of
``kickoff()`` / ``kickoff_async()``.

Importing this module imports no CrewAI; without CrewAI installed, ``install()`` and every class and
function here raise ``AdapterUnavailable`` naming ``pip install 'm99[crewai]'`` (an ``except`` clause
naming ``M99RunStopped`` then matches nothing).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from m99.errors import ModelCallRefused, ToolCallRefused

from ._common import GuardSource
from ._exports import CLASS, FUNCTION, Exports

if TYPE_CHECKING:
    from ._crewai_stop import M99RunStopped, M99ToolBlocked
    from ._crewai_tools import GuardedTool, protect_llm, wrap_tool

__all__ = [
    "GuardedTool",
    "M99RunStopped",
    "M99ToolBlocked",
    "install",
    "installed",
    "protect_llm",
    "uninstall",
    "wrap_tool",
]

_INSTALL = "_crewai_hooks"
_exports = Exports(
    "crewai",
    "CrewAI",
    {
        "GuardedTool": ("_crewai_tools", CLASS),
        "M99RunStopped": ("_crewai_stop", ModelCallRefused),
        "M99ToolBlocked": ("_crewai_stop", ToolCallRefused),
        "protect_llm": ("_crewai_tools", FUNCTION),
        "wrap_tool": ("_crewai_tools", FUNCTION),
    },
)


def install(guard_resolver: GuardSource = None) -> None:
    """Put M99 in CrewAI's tool path and register its LLM hooks process-wide; idempotent (again: only
    the resolver changes).  Install before the first ``kickoff``: CrewAI copies the LLM-hook list into
    each agent executor when it is built (an older executor gets the hooks at its next tool call)."""
    _exports.load(_INSTALL).install(guard_resolver)


def uninstall() -> None:
    """Undo exactly what ``install`` did; idempotent; never imports CrewAI."""
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
