"""What makes an adapter's public module importable without its framework.

The public module (``m99.adapters.crewai``) defines ``install`` / ``uninstall`` / ``installed`` itself and
serves every other name from the modules that import the framework, on first use (a module
``__getattr__``).  Without the framework a class name is a stand-in that raises ``AdapterUnavailable``
when instantiated or subclassed (an exception name is one no code can raise, so an ``except`` clause
naming it matches nothing), and a function name is one that raises when called.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, NoReturn

from m99.errors import AdapterUnavailable

__all__ = ["CLASS", "FUNCTION", "Exports"]

# What a name is, for its stand-in when the framework is missing: a class, a function, or (given as the
# M99 exception it extends) an exception.
CLASS = "class"
FUNCTION = "function"
Kind = str | type[BaseException]


class Exports:
    """The names an adapter's public module serves from its framework-importing modules."""

    def __init__(self, adapter: str, label: str, names: Mapping[str, tuple[str, Kind]]) -> None:
        self.adapter = adapter
        self.label = label  # how the framework calls itself: "LangChain"
        self.names = dict(names)  # public name -> (module under m99.adapters, kind)

    @property
    def hint(self) -> str:
        return f"pip install 'm99[{self.adapter}]'"

    def load(self, module: str) -> ModuleType:
        """Import ``m99.adapters.<module>`` (which imports the framework); ``AdapterUnavailable`` names the
        extra when the framework (or a package it needs) is missing."""
        try:
            return importlib.import_module(f"m99.adapters.{module}")
        except ImportError as exc:
            missing = exc.name or ""
            if missing == "m99" or missing.startswith("m99."):
                raise  # a bug of M99's own, not a missing framework
            raise AdapterUnavailable(self.unavailable(missing)) from exc

    def unavailable(self, missing: str) -> str:
        return f"the {self.label} adapter needs {self.label} ({missing or 'a package'} is missing): {self.hint}"

    def get(self, name: str, namespace: dict[str, Any]) -> Any:
        """The value of public ``name``; cached in ``namespace`` (the public module's globals) once found."""
        found = self.names.get(name)
        if found is None:
            raise AttributeError(f"module {namespace.get('__name__')!r} has no attribute {name!r}")
        module, kind = found
        try:
            value = getattr(self.load(module), name)
        except AdapterUnavailable as exc:
            return _stand_in(name, kind, str(exc))
        namespace[name] = value
        return value


def _stand_in(name: str, kind: Kind, message: str) -> Any:
    def unavailable(*args: Any, **kwargs: Any) -> NoReturn:
        raise AdapterUnavailable(message)

    if kind == FUNCTION:
        unavailable.__name__ = unavailable.__qualname__ = name
        unavailable.__doc__ = message
        return unavailable
    bases: tuple[type, ...] = (kind,) if isinstance(kind, type) else ()
    return type(
        name,
        bases,
        {
            "__doc__": message,
            "__new__": lambda cls, *args, **kwargs: unavailable(),
            "__init_subclass__": classmethod(lambda cls, **kwargs: unavailable()),
            "__module__": "m99.adapters",
        },
    )
