"""KILLSWITCH.md enforced inside real CrewAI and AutoGen runs with offline models that report usage:
triggers at their threshold and not before, a hard budget refusing the model call that would cross it
before it is sent, forbidden paths and actions refused with the tool body never run, and usage summed
across frameworks in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from m99.errors import M99KillSwitchTriggered
from m99.guard import Guard
from m99.policy import Stage
from m99.policy.gate import PolicyGate, load_for_process

from .adapters.conftest import _clean_adapters, guard, make_guard  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)

PRICES = {"*": {"input": 1000.0, "output": 1000.0}}  # $0.001 a token

Govern = Callable[..., PolicyGate]


@pytest.fixture
def govern(tmp_path: Path, guard: Guard) -> Iterator[Govern]:  # noqa: F811
    gates: list[PolicyGate] = []

    def attach(text: str, **options: Any) -> PolicyGate:
        path = tmp_path / "KILLSWITCH.md"
        path.write_text(text)
        options.setdefault("prices", PRICES)
        gate = load_for_process(path, agent=guard.name, data_dir=tmp_path, **options)
        assert gate is not None
        guard.attach_policy(gate)
        gates.append(gate)
        return gate

    yield attach
    guard.attach_policy(None)
    for gate in gates:
        gate.close()


# -- CrewAI -------------------------------------------------------------------------------------------------


def _crew_llm(*script: Any, tokens: int = 0) -> Any:
    from .adapters.crew_fakes import ScriptedLLM

    class UsageLLM(ScriptedLLM):
        """Reports ``usage`` tokens a call, as CrewAI's provider LLMs do."""

        usage: int = 0

        def call(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            answer = super().call(*args, **kwargs)
            if self.usage:
                self._track_token_usage_internal(
                    {"prompt_tokens": self.usage, "completion_tokens": 0, "total_tokens": self.usage}
                )
            return answer

    return UsageLLM(model="scripted", script=list(script), seen=[], native=True, usage=tokens)


def _crew_tools(effects: list[str]) -> list[Any]:
    from crewai.tools import tool

    from .adapters.crew_fakes import never_cache

    @tool("read_file")
    def read_file(path: str) -> str:
        """Read a file."""
        effects.append(f"read:{path}")
        return "contents"

    @tool("flaky")
    def flaky(x: str) -> str:
        """Fails."""
        effects.append(f"flaky:{x}")
        raise ValueError("flaky failed")

    @tool("drop_db")
    def drop_db(name: str) -> str:
        """Drop a database."""
        effects.append(f"drop:{name}")
        return "dropped"

    for t in (read_file, flaky, drop_db):
        t.cache_function = never_cache
    return [read_file, flaky, drop_db]


def test_crewai_forbidden_file_and_action_are_refused_with_the_body_never_run(govern: Govern) -> None:
    import m99.adapters.crewai as cra

    from .adapters.crew_fakes import agent, crew, native

    govern("## FORBIDDEN\nfiles:\n  - .env\nactions:\n  - drop_database\n")
    cra.install()
    effects: list[str] = []
    llm = _crew_llm(
        native("read_file", {"path": "config/.env"}),
        native("drop_db", {"name": "prod"}, 2),
        native("read_file", {"path": "notes.txt"}, 3),
        "done",
    )
    assert crew(agent("worker", llm, _crew_tools(effects))).kickoff().raw == "done"
    assert effects == ["read:notes.txt"]  # the forbidden two never ran; the run went on


def test_crewai_hard_budget_refuses_the_call_that_would_cross_it_before_it_is_sent(govern: Govern) -> None:
    import m99.adapters.crewai as cra

    from .adapters.crew_fakes import agent, crew, native

    # Worst case 200 tokens ($0.20) reserved per call, 150 used: the 4th call would pass $0.50.
    gate = govern("## TRIGGERS\ncost_limit_usd: 0.5\n", default_max_tokens=200)
    cra.install()
    effects: list[str] = []
    llm = _crew_llm(*[native("read_file", {"path": f"f{i}"}, i) for i in range(6)], "done", tokens=150)
    with pytest.raises(cra.M99RunStopped, match="would pass cost_limit_usd"):
        crew(agent("worker", llm, _crew_tools(effects))).kickoff()
    assert len(llm.seen) == 3
    budget = gate.engine.spend.session
    assert budget is not None and budget.spent == pytest.approx(0.45) and budget.reserved == 0


def test_crewai_consecutive_failures_stop_the_crew_at_the_count(govern: Govern) -> None:
    import m99.adapters.crewai as cra

    from .adapters.crew_fakes import agent, crew, native

    gate = govern("## TRIGGERS\nconsecutive_failures: 2\n")
    cra.install()
    effects: list[str] = []
    llm = _crew_llm(native("flaky", {"x": "1"}), native("flaky", {"x": "2"}, 2), native("read_file", {"path": "a"}, 3))
    with pytest.raises(cra.M99RunStopped, match="stopped by the policy"):
        crew(agent("worker", llm, _crew_tools(effects))).kickoff()
    assert effects == ["flaky:1", "flaky:2"] and gate.engine.stage == Stage.SHUTDOWN
    assert len(llm.seen) == 2  # the model call after the second failure was refused


# -- AutoGen ------------------------------------------------------------------------------------------------


def _ag_tools(effects: list[str]) -> list[Any]:
    from autogen_core.tools import FunctionTool

    def read_file(path: str) -> str:
        effects.append(f"read:{path}")
        return "contents"

    def flaky(x: str) -> str:
        effects.append(f"flaky:{x}")
        raise ValueError("flaky failed")

    def drop_db(name: str) -> str:
        effects.append(f"drop:{name}")
        return "dropped"

    return [
        FunctionTool(read_file, "Read a file."),
        FunctionTool(flaky, "Fails."),
        FunctionTool(drop_db, "Drop a database."),
    ]


def test_autogen_forbidden_directory_and_action_are_refused_with_the_body_never_run(
    govern: Govern, tmp_path: Path
) -> None:
    import m99.adapters.autogen as aga

    from .adapters.ag_fakes import ScriptedClient, agent, call

    govern("## FORBIDDEN\ndirectories:\n  - secrets\nactions:\n  - drop_database\n")
    aga.install()
    effects: list[str] = []
    client = ScriptedClient(
        [
            call("read_file", {"path": str(tmp_path / "secrets" / "k.txt")}),
            call("drop_db", {"name": "prod"}, 2),
            call("read_file", {"path": "notes.txt"}, 3),
            "done",
        ]
    )
    result = asyncio.run(agent("worker", client, _ag_tools(effects), max_tool_iterations=4).run(task="go"))
    assert effects == ["read:notes.txt"]
    said = " ".join(str(m.content) for m in result.messages)
    assert "FORBIDDEN" in said or "forbidden" in said


def test_autogen_hard_budget_refuses_the_model_call_before_it_is_sent(govern: Govern) -> None:
    import m99.adapters.autogen as aga

    from .adapters.ag_fakes import ScriptedClient, agent, call

    # Each call uses 7 tokens (3 + 4) and reserves 10: $0.01 worst, $0.007 spent; limit $0.02.
    gate = govern("## TRIGGERS\ncost_limit_usd: 0.02\n", default_max_tokens=10)
    aga.install()
    effects: list[str] = []
    client = ScriptedClient([call("read_file", {"path": f"f{i}"}, i) for i in range(5)])
    with pytest.raises(M99KillSwitchTriggered, match="would pass cost_limit_usd"):
        asyncio.run(agent("worker", client, _ag_tools(effects), max_tool_iterations=5).run(task="go"))
    assert client.calls == 2  # $0.014 spent + $0.01 worst case > $0.02: the third never reached the model
    budget = gate.engine.spend.session
    assert budget is not None and budget.spent == pytest.approx(0.014)


def test_autogen_consecutive_failures_stop_the_run_at_the_count_and_not_before(govern: Govern) -> None:
    import m99.adapters.autogen as aga

    from .adapters.ag_fakes import ScriptedClient, agent, call

    gate = govern("## TRIGGERS\nconsecutive_failures: 3\n")
    aga.install()
    effects: list[str] = []
    client = ScriptedClient([call("flaky", {"x": "1"}), call("flaky", {"x": "2"}, 2), "done"])
    asyncio.run(agent("worker", client, _ag_tools(effects), max_tool_iterations=4).run(task="go"))
    assert gate.engine.stage == Stage.NONE  # two failures: under the count
    client = ScriptedClient([call("flaky", {"x": "3"}), call("read_file", {"path": "a"}, 2), "done"])
    with pytest.raises(M99KillSwitchTriggered, match="stopped by the policy"):
        asyncio.run(agent("worker", client, _ag_tools(effects), max_tool_iterations=4).run(task="go"))
    assert gate.engine.stage == Stage.SHUTDOWN and "read:a" not in effects


# -- across frameworks ----------------------------------------------------------------------------------------


def test_tokens_are_summed_across_langchain_crewai_and_autogen_in_one_process(govern: Govern) -> None:
    import m99.adapters.autogen as aga
    import m99.adapters.crewai as cra
    import m99.adapters.langchain as lca

    from .adapters.ag_fakes import ScriptedClient, agent
    from .adapters.crew_fakes import agent as crew_agent
    from .adapters.crew_fakes import crew
    from .adapters.lc_fakes import model

    gate = govern("## TRIGGERS\ntokens_per_minute: 1000\n", default_max_tokens=1)
    lca.install()
    cra.install()
    aga.install()
    model("a", usage=400).invoke("x")  # LangChain: 400
    crew(crew_agent("worker", _crew_llm("done", tokens=400), [])).kickoff()  # CrewAI: 800
    assert gate.engine.measured()["tokens_per_minute"] == 800 and gate.engine.stage == Stage.NONE
    asyncio.run(agent("worker", ScriptedClient(["done"])).run(task="go"))  # AutoGen: its replay's count
    after = gate.engine.measured()["tokens_per_minute"]
    assert 800 < after < 1000 and gate.engine.stage == Stage.NONE
    model("b", usage=400).invoke("y")  # over 1000
    assert gate.engine.stage == Stage.SHUTDOWN
