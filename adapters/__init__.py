"""Framework adapters: each module turns one agent framework's hooks into questions to the Guard.

``install_on_import()`` (what ``m99.init`` calls) installs every adapter whose framework is installed
when that framework is imported, or at once if it already is; ``install_all()`` installs them all now.
Each adapter module also has per-object variants, and imports its framework only when used: importing
this package, or ``m99.adapters.langchain`` / ``crewai`` / ``autogen``, imports no agent framework.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from m99.errors import AdapterUnavailable

from ._common import GuardResolver, GuardSource, as_resolver, default_resolver, set_refusal_limit

if TYPE_CHECKING:
    from ._imports import AutoInstall

__all__ = [
    "ADAPTERS",
    "AdapterSpec",
    "AutoInstall",
    "GuardResolver",
    "available_adapters",
    "default_resolver",
    "install",
    "install_all",
    "install_on_import",
    "installed_adapters",
    "load",
    "set_refusal_limit",
    "uninstall",
    "uninstall_all",
]

logger = logging.getLogger("m99.adapters")

# Comma-separated adapter names that install_all() leaves alone (OpenTelemetry-style opt-out).
DISABLED_ENV = "M99_DISABLED_ADAPTERS"


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    name: str
    requires: tuple[str, ...]  # top-level import names install() needs, checked without importing them
    trigger: str  # the module whose import installs the adapter (install_on_import)
    implementation: str  # the module under m99.adapters that imports the framework and installs

    @property
    def module(self) -> str:
        """The adapter's public module (importable without the framework)."""
        return f"{__name__}.{self.name}"

    @property
    def hint(self) -> str:
        return f"pip install 'm99[{self.name}]'"

    def missing(self) -> str | None:
        """The first required package that is not installed, or None."""
        for package in self.requires:
            try:
                if importlib.util.find_spec(package) is None:
                    return package
            except (ImportError, ValueError):
                return package
        return None


ADAPTERS: dict[str, AdapterSpec] = {
    spec.name: spec
    for spec in (
        # install() needs langchain_core alone (M99Middleware also needs langchain and langgraph), and
        # every LangChain program imports it.
        AdapterSpec("langchain", ("langchain_core",), "langchain_core", "_langchain_managers"),
        AdapterSpec("crewai", ("crewai",), "crewai", "_crewai_hooks"),
        AdapterSpec("autogen", ("autogen_agentchat", "autogen_core"), "autogen_agentchat", "_autogen_agents"),
    )
}


def _spec(name: str) -> AdapterSpec:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown adapter {name!r}: expected one of {', '.join(ADAPTERS)}") from None


def available_adapters() -> list[str]:
    """The adapters whose framework is installed (found without importing it)."""
    return [name for name, spec in ADAPTERS.items() if spec.missing() is None]


def load(name: str) -> ModuleType:
    """``m99.adapters.<name>``; ``AdapterUnavailable`` names the extra if the framework is missing."""
    spec = _spec(name)
    package = spec.missing()
    if package is not None:
        raise AdapterUnavailable(f"the {name} adapter needs {package}, which is not installed: {spec.hint}")
    return importlib.import_module(spec.module)


def install(name: str, guard_resolver: GuardSource = None) -> None:
    """Install one adapter now (idempotent; imports its framework)."""
    load(name).install(as_resolver(guard_resolver))


def uninstall(name: str) -> None:
    """Uninstall one adapter if it was installed (idempotent; never imports the framework)."""
    module = sys.modules.get(f"{__name__}.{_spec(name).implementation}")
    if module is not None:
        module.uninstall()


def _excluded(exclude: Iterable[str] | None) -> set[str]:
    """``exclude``, or the names in ``$M99_DISABLED_ADAPTERS``; ValueError for a name that is no adapter."""
    if exclude is None:
        exclude = [n.strip() for n in os.environ.get(DISABLED_ENV, "").split(",") if n.strip()]
    elif isinstance(exclude, str):
        raise ValueError("exclude must be a list of adapter names, not one string")
    excluded = set(exclude)
    unknown = excluded - set(ADAPTERS)
    if unknown:
        raise ValueError(f"unknown adapters in exclude: {', '.join(sorted(unknown))}")
    return excluded


def install_all(
    guard_resolver: GuardSource = None, *, exclude: Iterable[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """Install every adapter whose framework is installed, now (importing each framework):
    ``(installed, {skipped: reason})``.

    ``exclude`` defaults to the names in ``$M99_DISABLED_ADAPTERS``.  An adapter that fails to
    install is reported (and logged as an error), never raised: the host application keeps running.
    """
    excluded = _excluded(exclude)
    resolver = as_resolver(guard_resolver)
    installed: list[str] = []
    skipped: dict[str, str] = {}
    for name, spec in ADAPTERS.items():
        if name in excluded:
            skipped[name] = "excluded"
            continue
        package = spec.missing()
        if package is not None:
            skipped[name] = f"{package} is not installed ({spec.hint})"
            continue
        try:
            load(name).install(resolver)
        except AdapterUnavailable as exc:
            skipped[name] = str(exc)
        except Exception as exc:
            logger.exception("m99: the %s adapter failed to install; %s runs unprotected", name, name)
            skipped[name] = f"install failed: {exc!r}"
        else:
            installed.append(name)
    return installed, skipped


def install_on_import(
    guard_resolver: GuardSource = None,
    *,
    exclude: Iterable[str] | None = None,
    on_install: Callable[[str], object] | None = None,
) -> AutoInstall:
    """Install every adapter whose framework is installed when that framework is imported (post-import
    hooks), or at once if it already is; ``on_install(name)`` is called after each one installs.

    Nothing is imported here: an agent that uses no framework pays for none.  The ``AutoInstall`` says
    what is installed, what waits for its framework's import and what was skipped; ``cancel()`` it to
    stop installing (a framework imported afterwards gets no adapter).  ``exclude`` as for
    ``install_all``; an adapter that fails to install is reported and logged, never raised.
    """
    from ._imports import watch

    return watch(as_resolver(guard_resolver), _excluded(exclude), on_install)


def uninstall_all() -> None:
    for name in ADAPTERS:
        uninstall(name)


def installed_adapters() -> list[str]:
    """The adapters currently installed (only loaded modules are asked)."""
    out = []
    for name, spec in ADAPTERS.items():
        module = sys.modules.get(f"{__name__}.{spec.implementation}")
        if module is not None and module.installed():
            out.append(name)
    return out


def __getattr__(name: str) -> object:
    if name == "AutoInstall":
        from ._imports import AutoInstall

        return AutoInstall
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
