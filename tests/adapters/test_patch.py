"""The install/patch bookkeeping every adapter shares: a marker on each wrapper, exact unwrap, a wrapper
someone else put on top of ours left in place (ours then passes through), a failed install rolled back,
and the supported framework versions checked at the first install."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from m99.adapters import GuardResolver
from m99.adapters._patch import MARK, Adapter, Installation, Patches, is_ours, unsupported_versions


class Base:
    def inherited(self) -> str:
        return "base"


class Target(Base):
    def method(self, x: int) -> int:
        return x

    @staticmethod
    def static(x: int) -> int:
        return x

    @classmethod
    def klass(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"


def doubling(previous: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = previous(*args, **kwargs)
        return result * 2

    return wrapper


def test_wrap_marks_keeps_the_descriptor_kind_and_undo_is_exact() -> None:
    before = dict(vars(Target))
    patches = Patches("demo")
    for name in ("method", "static", "klass", "inherited"):
        patches.wrap(Target, name, doubling)
    assert Target().method(2) == 4 and Target.static(3) == 6 and Target.klass(1) == "Target:1Target:1"
    assert Target().inherited() == "basebase"
    assert isinstance(vars(Target)["static"], staticmethod) and isinstance(vars(Target)["klass"], classmethod)
    assert all(is_ours(vars(Target)[name]) for name in ("method", "static", "klass", "inherited"))
    assert getattr(vars(Target)["method"], MARK) == "demo"
    assert vars(Target)["static"].__func__.__wrapped__ is before["static"].__func__
    patches.undo()
    assert dict(vars(Target)) == before  # the inherited one is deleted again, not shadowed
    assert not is_ours(vars(Target)["method"]) and not patches


def test_a_wrapper_added_after_ours_stays_and_ours_passes_through(caplog: pytest.LogCaptureFixture) -> None:
    original = Target.__dict__["method"]
    adapter: Adapter[Installation] = Adapter(
        "demo", Installation, lambda inst: inst.wrap(Target, "method", counting(inst, calls))
    )
    calls: list[int] = []
    adapter.install(GuardResolver())
    ours = Target.__dict__["method"]

    def theirs(self: Target, x: int) -> int:
        return int(ours(self, x)) + 100

    Target.method = theirs  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="m99.adapters"):
            adapter.uninstall()
        assert Target.__dict__["method"] is theirs and "wrapped after" in caplog.text
        assert Target().method(1) == 101 and calls == []  # ours, under theirs, passes through
        adapter.install(GuardResolver())  # a new install goes on top, and only it counts
        assert Target().method(1) == 101 and calls == [1]
        adapter.uninstall()
        assert Target.__dict__["method"] is theirs
    finally:
        Target.method = original  # type: ignore[method-assign]


def counting(inst: Installation, calls: list[int]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: Any, x: int) -> Any:
            if inst.live:
                calls.append(x)
            return previous(self, x)

        return method

    return factory


def test_install_is_idempotent_and_a_failing_install_leaves_nothing_behind() -> None:
    before = dict(vars(Target))
    undone: list[str] = []

    def put_in(inst: Installation) -> None:
        inst.wrap(Target, "method", doubling)
        inst.add(lambda: undone.append("hook"))
        raise RuntimeError("the framework moved a seam")

    broken: Adapter[Installation] = Adapter("broken", Installation, put_in)
    with pytest.raises(RuntimeError, match="moved a seam"):
        broken.install(GuardResolver())
    assert dict(vars(Target)) == before and undone == ["hook"] and not broken.installed()

    first, second = GuardResolver(), GuardResolver()
    adapter: Adapter[Installation] = Adapter("demo", Installation, lambda inst: inst.wrap(Target, "method", doubling))
    installation = adapter.install(first)
    assert adapter.install(second) is installation and installation.resolver is second
    assert Target().method(1) == 2  # wrapped once, not twice
    adapter.uninstall()
    adapter.uninstall()
    assert dict(vars(Target)) == before and not installation.live


def test_supported_versions_are_checked_at_the_first_install(caplog: pytest.LogCaptureFixture) -> None:
    assert unsupported_versions({"pytest": ">=1,<1000"}) == []
    assert unsupported_versions({"no-such-distribution-m99": ">=1"}) == []
    (problem,) = unsupported_versions({"pytest": ">=1000"})
    assert "pytest" in problem and "outside the versions" in problem
    adapter: Adapter[Installation] = Adapter("demo", Installation, lambda inst: None, supported={"pytest": "<1"})
    with caplog.at_level(logging.WARNING, logger="m99.adapters"):
        adapter.install(GuardResolver())
    assert "pytest" in caplog.text and "installs anyway" in caplog.text and adapter.installed()
    adapter.uninstall()


def test_every_adapter_declares_versions_its_installed_framework_meets() -> None:
    from m99.adapters import _autogen_agents, _crewai_hooks, _langchain_managers

    for module in (_langchain_managers, _crewai_hooks, _autogen_agents):
        assert module.SUPPORTED and unsupported_versions(module.SUPPORTED) == [], module.__name__
