"""`m99.init`: the one line installs every available adapter, still guards a process with no framework,
gives framework agents their own identities, and fails before the agent runs when it cannot register."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import httpx
import pytest

import m99
from m99.adapters import default_resolver, installed_adapters
from m99.errors import ConfigError, ControlPlaneUnreachable, ToolCallRefused
from m99.runtime import default_credentials
from m99.server import EmbeddedControlPlane, free_port

from .test_session import fire, wait_for


@pytest.fixture
def init(embedded: EmbeddedControlPlane) -> Iterator[Callable[..., m99.Runtime]]:
    def start(name: str = "research-bot", **kwargs: object) -> m99.Runtime:
        return m99.init(name, url=embedded.url, **kwargs)  # type: ignore[arg-type]

    yield start
    m99.shutdown()
    assert default_resolver.default is None and not default_resolver.agents


def test_init_installs_every_framework_adapter_and_shutdown_removes_them(init, admin: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    import autogen_agentchat.agents  # noqa: F401
    import crewai  # noqa: F401
    import langchain_core.tools  # noqa: F401

    # Every framework is imported already: each adapter installs at once.
    runtime = init(kind="autonomous")
    assert runtime.installed == ["langchain", "crewai", "autogen"]
    assert runtime.skipped == {} and runtime.waiting == []
    assert installed_adapters() == ["langchain", "crewai", "autogen"]
    assert default_resolver.default is runtime.guard
    assert runtime.guard.frameworks == ("autogen", "crewai", "langchain")
    agents = {a["name"]: a for a in admin.get("/api/agents").json()}
    assert agents["research-bot"]["kind"] == "autonomous"
    m99.shutdown()
    assert installed_adapters() == []
    assert admin.get("/api/agents", params={"all": "true"}).json()[0]["status"] == "stopped"


def test_l2_of_the_process_cuts_a_framework_agents_tool_off_the_network(
    init, admin: httpx.Client, local_site: str
) -> None:  # type: ignore[no-untyped-def]
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    from .adapters.lc_fakes import call, model

    answers: list[str] = []

    @tool
    def fetch(page: str) -> str:
        """Fetch a page of the SaaS."""
        try:
            answers.append(str(httpx.get(local_site + page, timeout=5).status_code))
        except httpx.ConnectError as exc:
            answers.append(str(exc))
        return answers[-1]

    runtime = init(kind="autonomous", exclude=["crewai", "autogen"])
    runtime.agent("lc-fetcher", framework="langchain")
    agent = create_agent(model(call("fetch", {"page": "a"}), "done"), [fetch], name="lc-fetcher")
    agent.invoke({"messages": [("user", "go")]})
    fire(admin, scope="agent:research-bot", level=2)  # the process, not the framework agent
    wait_for(lambda: runtime.guard.level == 2)
    agent = create_agent(model(call("fetch", {"page": "b"}), "done"), [fetch], name="lc-fetcher")
    agent.invoke({"messages": [("user", "go")]})  # tools still run at L2, but not the network
    assert answers[0] == "200" and "M99 L2 SaaS disconnection" in answers[1]


def test_l1_through_the_control_plane_redacts_a_langchain_tool_and_restore_ends_it(init, admin: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    """The one line, a real execute at L1 and a real restore: the redaction seams go into LangChain on
    the thread that applies the pushed change, and come out again on restore."""
    from langchain.agents import create_agent
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool

    from m99.credentials import REDACTED

    from .adapters.lc_fakes import call, model

    secret = "hunter2-db-password-0042"
    seen: list[str] = []

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        seen.append(key)
        return f"{key} is {secret}"

    runtime = init(kind="autonomous", exclude=["crewai", "autogen"])
    runtime.guard.protect_secret(secret, label="db")

    def run() -> str:
        agent = create_agent(model(call("lookup", {"key": secret}), "done"), [lookup])
        result = agent.invoke({"messages": [("user", "go")]})
        return str(next(m for m in result["messages"] if isinstance(m, ToolMessage)).content)

    assert run() == f"{secret} is {secret}"
    fire(admin, scope="agent:research-bot", level=1)
    wait_for(lambda: runtime.guard.level == 1)
    assert run() == f"{REDACTED} is {REDACTED}"
    restored = admin.post("/api/restore", json={"scope": "agent:research-bot", "by": "a@example.com", "reason": "ok"})
    assert restored.status_code == 200, restored.text
    wait_for(lambda: runtime.guard.level == 0)
    assert run() == f"{secret} is {secret}"
    assert seen == [secret, REDACTED, secret]


def test_init_again_returns_the_runtime_and_another_name_is_an_error(init) -> None:  # type: ignore[no-untyped-def]
    runtime = init(exclude=["crewai", "autogen"])
    assert init(exclude=["crewai", "autogen"]) is runtime
    assert m99.runtime.current() is runtime
    with pytest.raises(ConfigError, match="already initialised"):
        init("other-bot")
    with pytest.raises(ConfigError, match="one string"):
        m99.shutdown()
        init(credentials="OPENAI_API_KEY")


def test_init_fails_before_the_agent_runs_when_the_control_plane_is_unreachable() -> None:
    with pytest.raises(ControlPlaneUnreachable):
        m99.init("lonely-bot", url=f"http://127.0.0.1:{free_port()}")
    assert m99.runtime.current() is None
    assert default_resolver.default is None
    assert installed_adapters() == []


def test_a_framework_agent_gets_its_own_identity(init, admin: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    runtime = init(exclude=["crewai", "autogen", "langchain"])
    researcher = runtime.agent("researcher", framework="crewai", bind="Senior Researcher")
    writer = runtime.agent("writer", framework="autogen")
    assert runtime.agent("researcher") is researcher
    assert default_resolver.resolve("Senior Researcher") == (researcher, runtime.guard)
    team = runtime.agent("team", framework="autogen", bind=["alice", "bob"])
    assert default_resolver.resolve("alice")[0] is team and default_resolver.resolve("bob")[0] is team
    names = {a["name"] for a in admin.get("/api/agents").json()}
    assert {"research-bot", "researcher", "writer", "team"} <= names
    # A kill scoped to one framework agent stops it alone.
    fire(admin, scope="agent:researcher")
    wait_for(lambda: researcher.frozen)
    assert not writer.frozen and not runtime.guard.frozen
    # A kill scoped to a framework reaches the agents registered for it.
    fire(admin, scope="framework:autogen")
    wait_for(lambda: writer.frozen)
    assert not runtime.guard.frozen
    # A kill of the process's own identity governs every framework agent in it (asked by the adapters).
    admin.post("/api/restore", json={"scope": "global", "by": "a@example.com", "reason": "ok"})
    wait_for(lambda: not researcher.frozen and not writer.frozen)
    fire(admin, scope="agent:research-bot")
    wait_for(lambda: runtime.guard.frozen)
    with pytest.raises(ToolCallRefused):
        for guard in default_resolver.resolve("writer"):
            guard.check_tool("search")


def test_default_credentials_are_api_key_style_variables() -> None:
    env = {"OPENAI_API_KEY": "x", "AWS_SECRET_KEY": "x", "GH_AUTH_TOKEN": "x", "HOME": "/", "M99_API_KEY": "x"}
    assert default_credentials(env) == ["AWS_SECRET_KEY", "GH_AUTH_TOKEN", "OPENAI_API_KEY"]


NO_FRAMEWORKS = textwrap.dedent(
    """
    import json, sys
    for name in ("langchain_core", "langchain", "langgraph", "crewai", "autogen_agentchat", "autogen_core"):
        sys.modules[name] = None  # as if not installed
    import m99
    runtime = m99.init("plain-bot", url=sys.argv[1])
    print(json.dumps({"installed": runtime.installed, "skipped": runtime.skipped, "level": runtime.guard.level}))
    runtime.guard.check_status()
    m99.shutdown()
    """
)


def test_init_without_any_framework_still_guards_and_says_what_was_skipped(embedded: EmbeddedControlPlane) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_FRAMEWORKS, embedded.url], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(out.stdout)
    assert report["installed"] == [] and report["level"] == 0
    assert set(report["skipped"]) == {"langchain", "crewai", "autogen"}
    assert "pip install 'm99[crewai]'" in report["skipped"]["crewai"]


def test_the_frameworks_reported_are_those_an_adapter_installed_into(init) -> None:  # type: ignore[no-untyped-def]
    """Not ``mixed`` for every process with two frameworks installed: the frameworks actually installed
    into, so that ``framework:NAME`` scopes match; excluded frameworks are never reported."""
    import langchain_core.tools  # noqa: F401  (imported: the adapter installs at once)

    runtime = init(exclude=["crewai", "autogen"])
    assert runtime.installed == ["langchain"]
    assert runtime.guard.frameworks == ("langchain",)
    assert runtime.skipped == {"crewai": "excluded", "autogen": "excluded"}
    m99.shutdown()
    runtime = init(exclude=["langchain", "crewai", "autogen"])
    assert runtime.installed == [] and runtime.guard.frameworks == ("custom",)
    m99.shutdown()
    runtime = init(framework="support-loop", exclude=["crewai", "autogen"])
    assert runtime.guard.frameworks == ("langchain", "support-loop")
    m99.shutdown()
    runtime = init(framework=["support-loop"], exclude=["langchain", "crewai", "autogen"])
    assert runtime.guard.frameworks == ("support-loop",)
    assert runtime.agent("helper").frameworks == ("custom",)
    assert runtime.agent("writer", framework="autogen").frameworks == ("autogen",)


# A fresh interpreter with all three frameworks installed and none imported: m99.init imports none of
# them, and each adapter installs when the agent imports its framework.
LAZY = textwrap.dedent(
    """
    import json, sys
    import m99
    from m99.errors import ToolCallRefused

    FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "crewai", "autogen_agentchat", "autogen_core")

    def loaded():
        return sorted({m.split(".")[0] for m in sys.modules} & set(FRAMEWORKS))

    runtime = m99.init("lazy-bot", url=sys.argv[1])
    report = {"loaded": loaded(), "installed": runtime.installed, "waiting": runtime.waiting,
              "skipped": runtime.skipped, "frameworks": list(runtime.guard.frameworks)}
    from langchain_core.tools import tool

    @tool
    def write_file(text: str) -> str:
        \"\"\"Write a file.\"\"\"
        return "wrote " + text

    report["after_langchain"] = [runtime.installed, runtime.waiting, list(runtime.guard.frameworks)]
    import time, httpx
    admin = httpx.Client(base_url=sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
    body = {"by": "a@example.com", "reason": "drill", "scope": "framework:langchain"}
    auth = admin.post("/api/arm", json=body).json()
    admin.post("/api/execute", json={"authorization_id": auth["id"]})
    deadline = time.monotonic() + 10
    while not runtime.guard.frozen and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        write_file.invoke({"text": "x"})
        report["refused"] = False
    except ToolCallRefused:
        report["refused"] = True
    admin.post("/api/restore", json={"scope": "global", "by": "a@example.com", "reason": "done"})
    while runtime.guard.level and time.monotonic() < deadline:
        time.sleep(0.01)
    import crewai
    report["after_crewai"] = [runtime.installed, runtime.waiting, list(runtime.guard.frameworks)]
    m99.shutdown()
    report["after_shutdown"] = [runtime.installed, runtime.waiting, m99.adapters.installed_adapters()]
    import autogen_agentchat.agents  # imported after shutdown: no adapter
    report["autogen_after_shutdown"] = [m99.adapters.installed_adapters(), "m99.adapters._autogen_agents" in sys.modules]
    print(json.dumps(report))
    """
)


@pytest.mark.slow
def test_init_imports_no_framework_and_installs_each_adapter_when_its_framework_is_imported(
    embedded: EmbeddedControlPlane,
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LAZY, embedded.url, embedded.token],
        capture_output=True,
        text=True,
        timeout=120,
        env=_offline_env(),
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["loaded"] == []  # m99.init imported no framework
    assert report["installed"] == [] and report["skipped"] == {}
    assert report["waiting"] == ["langchain", "crewai", "autogen"]
    assert report["frameworks"] == ["custom"]
    assert report["after_langchain"] == [["langchain"], ["crewai", "autogen"], ["langchain"]]
    assert report["refused"] is True
    assert report["after_crewai"] == [["langchain", "crewai"], ["autogen"], ["crewai", "langchain"]]
    assert report["after_shutdown"] == [["langchain", "crewai"], [], []]
    assert report["autogen_after_shutdown"] == [[], False]


# The first framework import of an agent can come from anywhere in the framework: the adapter must
# install from each without breaking that import (a post-import hook runs inside it), then enforce.
FIRST_IMPORTS = {
    "langchain.agents": """
        from langchain.agents import create_agent
        from langchain_core.tools import tool
        refused = lambda: tool(lambda text: text, description="Write.").invoke({"text": "x"})
    """,
    "langgraph.prebuilt": """
        from langgraph.prebuilt import ToolNode
        from langchain_core.tools import tool
        refused = lambda: tool(lambda text: text, description="Write.").invoke({"text": "x"})
    """,
    "crewai.tools": """
        from crewai.tools import tool
        from m99.adapters._crewai_hooks import adapter
        refused = lambda: adapter.current.resolve()[0].check_tool("write_file")
    """,
    "autogen_agentchat.agents": """
        from autogen_agentchat.agents import AssistantAgent
        from m99.adapters._autogen_agents import adapter
        refused = lambda: adapter.current.resolve()[0].check_tool("write_file")
    """,
}
ADAPTER_OF = {"langchain.agents": "langchain", "langgraph.prebuilt": "langchain", "crewai.tools": "crewai"}

FIRST_IMPORT = """
import json, sys
import m99
from m99.errors import ToolCallRefused
runtime = m99.init("first-import-bot", url=sys.argv[1])
{case}
runtime.guard.apply_state(3, reason="drill")
try:
    refused()
    print(json.dumps({{"installed": runtime.installed, "refused": False}}))
except ToolCallRefused:
    print(json.dumps({{"installed": runtime.installed, "refused": True}}))
runtime.guard.apply_state(0)
m99.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FIRST_IMPORTS))
def test_an_adapter_installs_from_any_first_import_of_its_framework(case: str, embedded: EmbeddedControlPlane) -> None:
    code = FIRST_IMPORT.format(case=textwrap.dedent(FIRST_IMPORTS[case]).strip())
    out = subprocess.run(
        [sys.executable, "-c", code, embedded.url], capture_output=True, text=True, timeout=120, env=_offline_env()
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report == {"installed": [ADAPTER_OF.get(case, "autogen")], "refused": True}, out.stderr


def _offline_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TESTING="true")
    return env
