"""The package itself: `import m99` stays light, and `__all__` is the public API."""

from __future__ import annotations

import subprocess
import sys
import types

import m99

HEAVY = {
    "langchain_core",
    "langchain",
    "langgraph",
    "crewai",
    "autogen_agentchat",
    "autogen_core",
    "fastapi",
    "uvicorn",
    "starlette",
    "pydantic",
}


def test_import_m99_pulls_in_no_framework_and_no_server() -> None:
    code = "import sys, m99; print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        .stdout.strip()
        .split(",")
    )
    assert not loaded & HEAVY, loaded & HEAVY


def test_all_is_the_public_api() -> None:
    public = {
        name for name in dir(m99) if not name.startswith("_") and not isinstance(getattr(m99, name), types.ModuleType)
    } | set(m99._LAZY)
    assert set(m99.__all__) - {"__version__"} == public - {"annotations", "TYPE_CHECKING", "Any"}
    for name in m99.__all__:
        assert getattr(m99, name) is not None


def test_every_error_is_an_m99_error_with_an_exit_code() -> None:
    for name in m99.__all__:
        value = getattr(m99, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, m99.M99Error) and value.exit_code > 0
