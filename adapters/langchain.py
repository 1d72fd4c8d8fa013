"""LangChain adapter: ``install()`` puts M99 in LangChain's callback managers, so every tool and model
call in the process is checked (one line, no ``config``) and, at L1, every tool's input and output is
redacted; ``M99CallbackHandler`` checks the runs it is passed to; ``M99Middleware`` for
``create_agent`` also redacts the messages sent to the model and ends a frozen run cleanly.

Importing this module imports no LangChain; without LangChain installed, ``install()`` and every class
and function here raise ``AdapterUnavailable`` naming ``pip install 'm99[langchain]'``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ._common import GuardSource
from ._exports import CLASS, FUNCTION, Exports

if TYPE_CHECKING:
    from ._langchain_middleware import M99Middleware
    from ._langchain_runs import M99CallbackHandler, protect_model

__all__ = ["M99CallbackHandler", "M99Middleware", "install", "installed", "protect_model", "uninstall"]

_INSTALL = "_langchain_managers"
_exports = Exports(
    "langchain",
    "LangChain",
    {
        "M99CallbackHandler": ("_langchain_runs", CLASS),
        "M99Middleware": ("_langchain_middleware", CLASS),
        "protect_model": ("_langchain_runs", FUNCTION),
    },
)


def install(guard_resolver: GuardSource = None) -> None:
    """Check every LangChain tool and model call in the process against the Guard, and at L1 redact every
    tool's input and output; idempotent (calling again only updates the resolver).  A run that has an
    ``M99CallbackHandler`` of its own is left to it for the checks."""
    _exports.load(_INSTALL).install(guard_resolver)


def uninstall() -> None:
    """Undo exactly what ``install`` did; idempotent.  A method someone else wrapped after ``install``
    keeps their wrapper (ours under it then passes calls through).  Never imports LangChain."""
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
