"""The adapter registry (``install_all`` and friends), the Guard resolution every adapter shares, and
what happens when a framework is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

import m99.adapters as adapters
from m99.adapters import ADAPTERS, GuardResolver, default_resolver
from m99.adapters._common import scoped
from m99.errors import AdapterUnavailable, M99Error
from m99.guard import Guard

pytestmark = pytest.mark.timeout(120)


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=100)


def test_importing_the_adapters_package_imports_no_framework() -> None:
    child = python(
        """
        import sys
        import m99.adapters
        from m99.adapters import langchain, crewai, autogen
        assert m99.adapters.available_adapters() == ["langchain", "crewai", "autogen"]
        assert not any(m.installed() for m in (langchain, crewai, autogen))
        loaded = [m for m in sys.modules if m.split(".")[0] in ("langchain", "langchain_core",
                  "langgraph", "crewai", "autogen_agentchat", "autogen_core", "autogen_ext")]
        assert loaded == [], loaded
        """
    )
    assert child.returncode == 0, child.stderr


# The packages each adapter's framework brings: a blocker on sys.meta_path makes them unimportable.
FRAMEWORK_PACKAGES = {
    "langchain": ("langchain_core", "langchain", "langgraph"),
    "crewai": ("crewai",),
    "autogen": ("autogen_agentchat", "autogen_core", "autogen_ext"),
}

BLOCKER = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_an_adapter_module_imports_without_its_framework_and_using_it_names_the_extra(name: str) -> None:
    """Importing ``m99.adapters.<name>`` works without the framework; ``install()`` and every class and
    function it exports raise ``AdapterUnavailable`` with the extra to install, an ``except`` clause
    naming one of its exceptions matches nothing, and ``uninstall()`` / ``installed()`` just work."""
    child = python(
        f"""
        BLOCKED = {FRAMEWORK_PACKAGES[name]!r}
        {textwrap.indent(BLOCKER, "        ").strip()}
        import m99.adapters as adapters
        from m99.adapters import langchain, crewai, autogen  # all three import, whatever is installed
        from m99.errors import AdapterUnavailable, M99KillSwitchTriggered
        module = {{"langchain": langchain, "crewai": crewai, "autogen": autogen}}[{name!r}]
        hint = "pip install 'm99[{name}]'"

        def refuses(call, what):
            try:
                call()
            except AdapterUnavailable as exc:
                assert hint in str(exc), (what, str(exc))
            else:
                raise SystemExit(f"{{what}}: no AdapterUnavailable")

        assert {name!r} not in adapters.available_adapters()
        assert module.installed() is False
        module.uninstall()
        refuses(module.install, "install()")
        refuses(lambda: adapters.load({name!r}), "load()")
        used = []
        for public in module.__all__:
            if public in ("install", "uninstall", "installed", "WITHHELD"):
                continue
            value = getattr(module, public)
            used.append(public)
            if isinstance(value, type) and issubclass(value, BaseException):
                try:  # an except clause naming it is evaluated, and matches nothing
                    raise M99KillSwitchTriggered("stop")
                except value:
                    raise SystemExit(f"{{public}} matched an exception it is not")
                except M99KillSwitchTriggered:
                    pass
                assert issubclass(value, M99KillSwitchTriggered), public
            refuses(lambda: value(), public)
            if isinstance(value, type):
                refuses(lambda: type("Mine", (value,), {{}}), f"subclassing {{public}}")
        assert used, "the module exports nothing to use"
        installed, skipped = adapters.install_all(exclude=[n for n in adapters.ADAPTERS if n != {name!r}])
        assert installed == [] and hint in skipped[{name!r}], skipped
        auto = adapters.install_on_import(exclude=[n for n in adapters.ADAPTERS if n != {name!r}])
        assert auto.installed == [] and not auto.waiting and hint in auto.skipped[{name!r}], auto
        print("ok", used)
        """
    )
    assert child.returncode == 0, child.stderr + child.stdout
    assert child.stdout.startswith("ok"), child.stdout


def test_install_all_and_uninstall_all_are_idempotent(guard: Guard) -> None:
    installed, skipped = adapters.install_all()
    assert installed == ["langchain", "crewai", "autogen"] and skipped == {}
    assert adapters.install_all() == (installed, skipped)
    assert adapters.installed_adapters() == installed
    adapters.uninstall_all()
    adapters.uninstall_all()
    assert adapters.installed_adapters() == []


def test_install_all_exclusions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(adapters.DISABLED_ENV, "crewai, autogen")
    installed, skipped = adapters.install_all()
    assert installed == ["langchain"] and skipped == {"crewai": "excluded", "autogen": "excluded"}
    with pytest.raises(ValueError, match="unknown adapters"):
        adapters.install_all(exclude=["haystack"])
    with pytest.raises(ValueError, match="unknown adapter"):
        adapters.install("haystack")


def test_an_adapter_that_fails_to_install_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    module = adapters.load("langchain")

    def broken(resolver: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "install", broken)
    installed, skipped = adapters.install_all()
    assert "langchain" not in installed and "boom" in skipped["langchain"]


def test_public_api() -> None:
    assert issubclass(AdapterUnavailable, M99Error) and AdapterUnavailable.exit_code == 2
    assert all(hasattr(adapters, name) for name in adapters.__all__)


# -- Guard resolution ------------------------------------------------------------------------------------


def test_resolution_order_and_deduplication(make_guard: Callable[..., Guard]) -> None:
    process, context, writer = make_guard("proc"), make_guard("ctx"), make_guard("writer-g")
    resolver = GuardResolver(default=process)
    resolver.bind("writer", writer)
    assert resolver.resolve() == (process,)
    assert resolver.resolve("writer") == (writer, process)
    assert resolver.resolve("reader") == (process,)
    with context.activate():
        assert resolver.resolve("writer") == (writer, context, process)
        assert resolver.resolve() == (context, process)
    with process.activate():
        assert resolver.resolve() == (process,)
    resolver.unbind("writer")
    assert resolver.resolve("writer") == (process,)
    assert GuardResolver().resolve() == ()


def test_default_may_be_a_callable_read_live(make_guard: Callable[..., Guard]) -> None:
    current: list[Guard] = [make_guard("first")]
    resolver = GuardResolver(default=lambda: current[0])
    assert resolver.resolve() == (current[0],)
    current[0] = make_guard("second")
    assert resolver.resolve()[0].name == "second"


def test_a_per_object_guard_still_answers_to_the_process_guard(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    own = make_guard("own")
    assert scoped(own)(None) == (own, guard)
    assert scoped(guard)(None) == (guard,)
    default_resolver.bind("writer", own)
    assert scoped(None)("writer") == (own, guard)
    with pytest.raises(TypeError):
        scoped("not a guard")  # type: ignore[arg-type]


def test_install_on_import_installs_what_is_imported_reports_failures_and_cancel_stops_it(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    import langchain_core.tools  # noqa: F401  (imported: its adapter installs at once)

    from m99.adapters import _langchain_managers

    installed_now: list[str] = []
    auto = adapters.install_on_import(exclude=["crewai", "autogen"], on_install=installed_now.append)
    assert auto.installed == installed_now == ["langchain"] and not auto.waiting
    assert auto.skipped == {"crewai": "excluded", "autogen": "excluded"}
    auto.cancel()
    adapters.uninstall_all()

    def broken(resolver: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_langchain_managers, "install", broken)
    auto = adapters.install_on_import(exclude=["crewai", "autogen"], on_install=installed_now.append)
    assert auto.installed == [] and "boom" in auto.skipped["langchain"]  # reported, never raised
    auto.cancel()
    with pytest.raises(ValueError, match="unknown adapters"):
        adapters.install_on_import(exclude=["haystack"])
