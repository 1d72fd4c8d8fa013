"""Installing an adapter when its framework is imported, so that ``m99.init`` imports no framework.

A post-import hook (``wrapt.register_post_import_hook``: called once the module has been executed, or at
once if it already has) is registered for each framework's trigger module, once per process.  wrapt has
no way to take a hook back, so the hook consults live state: the ``AutoInstall`` records still active.
A hook runs inside the importing thread's import, so it never raises (that would fail the user's
import) and holds no lock while it imports the adapter: an import under a lock could wait on another
thread that is importing the framework and waiting, in this very hook, for that lock.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType

import wrapt

from ._common import GuardResolver

__all__ = ["AutoInstall", "watch"]

logger = logging.getLogger("m99.adapters")

# Held to change the records below, and around the (import-free) install step, so that a cancelled
# AutoInstall never installs afterwards.
_lock = threading.RLock()
_active: list[AutoInstall] = []
_hooked: set[str] = set()  # modules with a hook registered that has not fired yet


class AutoInstall:
    """What one ``install_on_import`` looks after: the adapters ``installed`` (in the order they were),
    those ``waiting`` for their framework's import (name -> the module awaited), and those ``skipped``
    (name -> why: excluded, not installed, failed to install)."""

    def __init__(self, resolver: GuardResolver, on_install: Callable[[str], object] | None) -> None:
        self.resolver = resolver
        self.installed: list[str] = []
        self.waiting: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.active = True
        self._on_install = on_install

    def cancel(self) -> None:
        """Install nothing more: a framework imported from now on gets no adapter from this record
        (what is installed stays installed: ``uninstall_all()`` takes it out)."""
        with _lock:
            self.active = False
            self.waiting.clear()
            if self in _active:
                _active.remove(self)

    def __repr__(self) -> str:
        return f"<AutoInstall installed={self.installed} waiting={sorted(self.waiting)} skipped={sorted(self.skipped)}>"

    def _install(self, name: str, implementation: str) -> None:
        """Install adapter ``name`` (its framework was imported); never raises."""
        try:
            module = importlib.import_module(f"m99.adapters.{implementation}")  # no lock held: see above
            with _lock:
                if not self.active or name not in self.waiting:
                    return
                module.install(self.resolver)
                del self.waiting[name]
                self.installed.append(name)
                if self._on_install is not None:
                    try:
                        self._on_install(name)
                    except Exception:
                        logger.exception("m99: on_install(%r) failed", name)
        except Exception as exc:
            logger.exception("m99: the %s adapter failed to install; %s runs unprotected", name, name)
            with _lock:
                if self.waiting.pop(name, None) is not None:
                    self.skipped[name] = f"install failed: {exc!r}"
            return
        logger.debug("m99: the %s adapter is installed", name)


def watch(resolver: GuardResolver, excluded: set[str], on_install: Callable[[str], object] | None) -> AutoInstall:
    from . import ADAPTERS

    record = AutoInstall(resolver, on_install)
    for name, spec in ADAPTERS.items():
        if name in excluded:
            record.skipped[name] = "excluded"
            continue
        package = spec.missing()
        if package is not None:
            record.skipped[name] = f"{package} is not installed ({spec.hint})"
            continue
        record.waiting[name] = spec.trigger
    with _lock:
        _active.append(record)
        # In the order of ADAPTERS, so that adapters imported already install in that order.
        register = [m for m in dict.fromkeys(record.waiting.values()) if m not in _hooked]
        _hooked.update(register)
    for module in register:
        # Outside the lock: for a module imported already, wrapt calls the hook right here.
        wrapt.register_post_import_hook(_imported, module)
    for module in {m for m in record.waiting.values() if m not in register}:
        loaded = sys.modules.get(module)
        if loaded is not None:  # its hook fired for an earlier record, before this one existed
            _imported(loaded)
    return record


def _imported(module: ModuleType) -> None:
    """The post-import hook: install every adapter an active record has waiting for ``module``."""
    from . import ADAPTERS

    try:
        name = module.__name__
        with _lock:
            _hooked.discard(name)
            due = [
                (record, adapter)
                for record in _active
                for adapter, awaited in record.waiting.items()
                if awaited == name
            ]
        for record, adapter in due:
            record._install(adapter, ADAPTERS[adapter].implementation)
    except Exception:  # never fail the user's import
        logger.exception("m99: the post-import hook for %r failed", getattr(module, "__name__", module))
