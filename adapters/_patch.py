"""What every adapter's ``install()`` / ``uninstall()`` shares: one record of what an install put into its
framework (replaced attributes, each wrapper marked as M99's, and registrations), taken out exactly.

``Adapter`` is the install state of one adapter (at most one ``Installation`` at a time, under a lock);
``Installation.wrap`` replaces a function and remembers what was there, so that ``take_out`` puts back
precisely that, newest first.  A wrapper someone else wrapped after us stays where it is: ours under it
then passes calls through, because every wrapper tests ``installation.live`` first.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from ._common import GuardResolver, GuardSource, Resolve, as_resolver

__all__ = ["MARK", "Adapter", "Installation", "Patches", "is_ours", "unsupported_versions"]

logger = logging.getLogger("m99.adapters")

# The attribute every M99 wrapper carries: the name of the adapter that put it in.
MARK = "__m99_adapter__"

_ABSENT: Any = object()  # the attribute was inherited (or missing): undoing deletes ours

# A wrapper factory: given the function it replaces (unwrapped from staticmethod/classmethod), the wrapper.
Factory = Callable[[Callable[..., Any]], Callable[..., Any]]


def is_ours(value: Any) -> bool:
    """Whether ``value`` (a function, or a staticmethod/classmethod around one) is an M99 wrapper."""
    return bool(getattr(getattr(value, "__func__", value), MARK, None))


class _Replaced:
    __slots__ = ("before", "name", "owner", "placed")

    def __init__(self, owner: Any, name: str, placed: Any, before: Any) -> None:
        self.owner, self.name, self.placed, self.before = owner, name, placed, before

    def undo(self, adapter: str) -> None:
        if vars(self.owner).get(self.name) is not self.placed:
            label = getattr(self.owner, "__qualname__", None) or getattr(self.owner, "__name__", repr(self.owner))
            logger.warning(
                "m99: %s.%s was wrapped after the %s adapter was installed; left in place (M99's wrapper under "
                "it passes calls through now)",
                label,
                self.name,
                adapter,
            )
            return
        if self.before is _ABSENT:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.before)


class Patches:
    """Attributes replaced in a framework and registrations made with it, undone newest first."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self._undo: list[_Replaced | Callable[[], object]] = []

    def __bool__(self) -> bool:
        return bool(self._undo)

    def wrap(self, owner: Any, name: str, factory: Factory) -> Callable[..., Any]:
        """Replace ``owner.name`` (a class's or a module's function) by ``factory(current)``; returns the
        wrapper.  A staticmethod or classmethod stays one; the wrapper is marked with ``MARK`` and keeps
        what it wraps in ``__wrapped__``."""
        raw = inspect.getattr_static(owner, name)
        descriptor = type(raw) if isinstance(raw, staticmethod | classmethod) else None
        current = raw.__func__ if descriptor is not None else raw
        if not callable(current):
            raise TypeError(f"{owner!r}.{name} is not a function")
        wrapper = factory(current)
        setattr(wrapper, MARK, self.adapter)
        wrapper.__wrapped__ = current  # type: ignore[attr-defined]
        placed = descriptor(wrapper) if descriptor is not None else wrapper
        before = vars(owner).get(name, _ABSENT)
        setattr(owner, name, placed)
        self._undo.append(_Replaced(owner, name, placed, before))
        return wrapper

    def add(self, undo: Callable[[], object]) -> None:
        """Remember how to undo a registration made with the framework (a hook, a listener, a filter)."""
        self._undo.append(undo)

    def undo(self) -> None:
        """Take out everything, newest first; a failing step is logged and the rest still happen."""
        steps, self._undo = self._undo, []
        for step in reversed(steps):
            try:
                if isinstance(step, _Replaced):
                    step.undo(self.adapter)
                else:
                    step()
            except Exception:
                logger.exception("m99: the %s adapter could not undo %r", self.adapter, step)


class Installation(Patches):
    """What one ``install()`` put into a framework, and the Guards its hooks ask.

    ``live`` is read by every wrapper before it does anything: False once uninstalled, so a wrapper that
    could not be taken out passes calls straight through.
    """

    def __init__(self, adapter: str, resolver: GuardResolver) -> None:
        super().__init__(adapter)
        self.live = True
        self.resolver = resolver
        self.resolve: Resolve = resolver.resolve

    def use(self, resolver: GuardResolver) -> None:
        self.resolver = resolver
        self.resolve = resolver.resolve


InstallationT = TypeVar("InstallationT", bound=Installation)


class Adapter(Generic[InstallationT]):
    """The install state of one adapter: ``install`` builds an ``Installation`` and has ``put_in`` fill it,
    ``uninstall`` takes it out.  Idempotent: installing again only changes the resolver.

    ``put_in`` must not import anything (the framework is imported before): an import under this lock
    could wait on a thread that is importing the framework and waiting, in a post-import hook, for it.
    """

    def __init__(
        self,
        name: str,
        make: Callable[[str, GuardResolver], InstallationT],
        put_in: Callable[[InstallationT], None],
        *,
        supported: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.current: InstallationT | None = None
        self._make = make
        self._put_in = put_in
        self._supported = dict(supported or {})
        self._checked = False
        self._lock = threading.Lock()

    def install(self, source: GuardSource = None) -> InstallationT:
        resolver = as_resolver(source)
        with self._lock:
            current = self.current
            if current is not None:
                current.use(resolver)
                return current
            if not self._checked:
                self._checked = True
                for problem in unsupported_versions(self._supported):
                    logger.warning("m99: %s; the %s adapter installs anyway", problem, self.name)
            installation = self._make(self.name, resolver)
            try:
                self._put_in(installation)
            except BaseException:
                installation.live = False
                installation.undo()
                raise
            self.current = installation
            return installation

    def uninstall(self) -> None:
        with self._lock:
            installation, self.current = self.current, None
            if installation is None:
                return
            installation.live = False
            installation.undo()

    def installed(self) -> bool:
        return self.current is not None


# -- supported versions, checked once at the first install ------------------------------------------------


def unsupported_versions(supported: Mapping[str, str]) -> list[str]:
    """For each distribution whose installed version is outside ``supported`` (``{"crewai": ">=1.15"}``,
    comparisons joined by commas), a sentence saying so.  A version that cannot be read is not reported."""
    from importlib.metadata import PackageNotFoundError, version

    problems = []
    for distribution, rule in supported.items():
        try:
            found = version(distribution)
        except PackageNotFoundError:
            continue
        if not _satisfies(found, rule):
            problems.append(f"{distribution} {found} is outside the versions this adapter supports ({rule})")
    return problems


_COMPARE: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


def _release(text: str) -> tuple[int, ...]:
    """The numeric release of a version (``1.15.30`` -> (1, 15, 30); ``0.8.0rc1`` -> (0, 8, 0))."""
    parts = []
    for part in text.strip().split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(parts)


def _satisfies(found: str, rule: str) -> bool:
    have = _release(found)
    if not have:
        return True  # not a version we can compare: say nothing
    for clause in rule.split(","):
        clause = clause.strip()
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if clause.startswith(op):
                want = _release(clause[len(op) :])
                width = max(len(have), len(want))
                if not _COMPARE[op](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
                    return False
                break
    return True
