"""A fleet-wide ``cost_limit_daily_usd`` (``cost_limit_daily_scope: class|global``): leased from the control
plane in chunks, shared by two real processes running LangChain with an offline model that reports
usage, never granted past the limit; a restart takes its share up again, a closing process gives back
what it did not spend, an unreachable control plane grants nothing (fail closed); and every hostile
lease request is refused with a 4xx and no state change."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from m99.cli import main
from m99.control.budgets import utc_day
from m99.link import ControlLink
from m99.policy.lease import FleetAllowance
from m99.policy.parse import parse_text
from m99.server import EmbeddedControlPlane

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
PRICES = {"*": {"input": 10.0, "output": 10.0}}  # $10 per million tokens: $0.00001 a token

FLEET_POLICY = """# KILLSWITCH
## TRIGGERS
cost_limit_daily_usd: {limit}
cost_limit_daily_scope: {scope}
cost_limit_daily_chunk_usd: {chunk}
"""


def fields(want: float, *, spent: float = 0.0, limit: float = 1.0, **more: Any) -> dict[str, Any]:
    out = {"scope": "class", "day": utc_day(time.time()), "limit_usd": limit, "want_usd": want, "spent_usd": spent}
    return {**out, "nonce": secrets.token_hex(16), **more}


def lease(link: ControlLink, want: float, **more: Any) -> dict[str, Any]:
    return link.verify_state(link.send_signed_once("budget", "budget", fields(want, **more), timeout=10))


@pytest.fixture
def enrol(admin: httpx.Client) -> str:
    """An agent-role enrolment token: only agents enrolled with one may lease fleet dollars."""
    token: str = admin.post("/api/tokens", json={"name": "pool", "role": "agent"}).json()["token"]
    return token


def registered(url: str, tmp_path: Path, name: str, kind: str = "worker", *, token: str | None = None) -> ControlLink:
    link = ControlLink(url, key_file=tmp_path / f"{name}.key", enrol_token=token)
    link.register(name, kind)
    return link


def budgets(admin: httpx.Client) -> list[dict[str, Any]]:
    answer = admin.get("/api/policy/budgets")
    assert answer.status_code == 200, answer.text
    groups: list[dict[str, Any]] = answer.json()["budgets"]
    return groups


# -- parse and explain ----------------------------------------------------------------------------------------


def test_the_scope_and_chunk_keys_parse_and_bad_values_name_their_line() -> None:
    ok = parse_text(FLEET_POLICY.format(limit=5, scope="class", chunk=0.5))
    assert ok.policy is not None and ok.problems == ()
    t = ok.policy.triggers
    assert t.fleet and t.daily_scope == "class" and t.chunk_usd == 0.5
    default = parse_text("## TRIGGERS\ncost_limit_daily_usd: 5\ncost_limit_daily_scope: global\n").policy
    assert default is not None and default.triggers.chunk_usd == pytest.approx(0.25)  # 1/20 of the limit
    bad = parse_text(FLEET_POLICY.format(limit=5, scope="planet", chunk=0.001))
    assert bad.policy is None
    found = {(p.key, p.line) for p in bad.problems if p.severity == "error"}
    assert ("TRIGGERS.cost_limit_daily_scope", 4) in found  # not one of agent, class, global
    assert ("TRIGGERS.cost_limit_daily_chunk_usd", 5) in found  # under 1/1000 of the limit
    greedy = parse_text(FLEET_POLICY.format(limit=5, scope="class", chunk=2))
    assert [p.key for p in greedy.problems] == ["TRIGGERS.cost_limit_daily_chunk_usd"]  # over 1/4 of the limit
    lonely = parse_text("## TRIGGERS\ncost_limit_daily_scope: class\n")
    assert any("has no effect without cost_limit_daily_usd" in p.message for p in lonely.problems)


def test_policy_check_says_how_a_fleet_budget_is_enforced_and_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text(FLEET_POLICY.format(limit=5, scope="global", chunk=0.5))
    result = CliRunner().invoke(main, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "cost_limit_daily_scope = global [enforced] line 4" in text and "one budget per UTC day" in text
    assert "never passes the limit" in text and "each lease asks for 0.5 USD" in text
    assert "per UTC day, one for the whole global scope" in text
    path.write_text("## TRIGGERS\ncost_limit_daily_usd: 5\n")
    result = CliRunner().invoke(main, ["policy", "check", str(path)])
    assert "this agent's own day" in " ".join(result.output.split())


# -- the control plane's side ---------------------------------------------------------------------------------


def test_leases_never_grant_past_the_limit_and_a_give_back_returns_the_unspent(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, enrol: str
) -> None:
    a, b = registered(embedded.url, tmp_path, "a", token=enrol), registered(embedded.url, tmp_path, "b", token=enrol)
    assert lease(a, 0.4)["granted_usd"] == pytest.approx(0.25)  # a quarter of the limit at most per lease
    assert lease(a, 0.2)["granted_usd"] == pytest.approx(0.45)
    assert lease(b, 0.25)["granted_usd"] == pytest.approx(0.25)
    assert lease(b, 0.15)["granted_usd"] == pytest.approx(0.4)
    third = lease(a, 0.25, spent=0.3)  # only 0.15 is left of 1.0
    assert third["leased_usd"] == pytest.approx(0.15) and third["granted_usd"] == pytest.approx(0.6)
    assert lease(b, 0.25)["leased_usd"] == 0.0  # used up: refused
    back = lease(a, 0.0, spent=0.35, final=True)  # a closes having spent 0.35 of its 0.6
    assert back["granted_usd"] == pytest.approx(0.35)
    assert lease(b, 0.25)["leased_usd"] == pytest.approx(0.25)  # what a gave back
    # a reported spend never goes down: an agent cannot free budget by reporting less
    assert lease(a, 0.0, spent=0.1)["spent_usd"] == pytest.approx(0.35)
    (group,) = budgets(admin)
    assert group["scope"] == "class:worker" and group["used_usd"] == pytest.approx(1.0)
    assert {s["agent"]: s["refused"] for s in group["agents"]} == {"a": 0, "b": 1}
    kinds = [e["kind"] for e in admin.get("/api/audit", params={"limit": 1000}).json()]
    assert kinds.count("budget.leased") == 6 and kinds.count("budget.exhausted") == 1
    assert kinds.count("budget.returned") == 1
    # another class, and the global scope, are budgets of their own
    c = registered(embedded.url, tmp_path, "c", kind="reviewer", token=enrol)
    assert lease(c, 0.25)["scope"] == "class:reviewer" and lease(c, 0.25)["granted_usd"] == pytest.approx(0.5)
    assert lease(c, 0.25, scope="global")["granted_usd"] == pytest.approx(0.25)


def test_the_smallest_limit_declared_today_binds_and_a_larger_one_cannot_raise_it(
    embedded: EmbeddedControlPlane, tmp_path: Path, enrol: str
) -> None:
    small, big = (registered(embedded.url, tmp_path, n, token=enrol) for n in ("small", "big"))
    for _ in range(3):
        lease(small, 1.25, limit=5.0)
    assert lease(small, 1.25, limit=5.0)["granted_usd"] == pytest.approx(5.0)
    # a file (or a forger holding an enrolled key) that says a billion takes nothing more
    answer = lease(big, 1e9, limit=1e9)
    assert answer["leased_usd"] == 0.0 and answer["limit_usd"] == pytest.approx(5.0)
    # and spends reported past the limit free nothing
    assert lease(small, 1.0, limit=5.0, spent=0.5)["leased_usd"] == 0.0
    # nor may the agent that declared the smallest limit raise it afterwards
    assert lease(small, 1.0, limit=50.0)["limit_usd"] == pytest.approx(5.0)


def test_crumbs_are_leased_at_least_a_thousandth_of_the_limit(
    embedded: EmbeddedControlPlane, tmp_path: Path, enrol: str
) -> None:
    a = registered(embedded.url, tmp_path, "a", token=enrol)
    assert lease(a, 1e-9, limit=10.0)["leased_usd"] == pytest.approx(0.01)


def test_an_agent_registered_without_an_enrolment_token_may_not_lease(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path
) -> None:
    """Open enrolment lets anyone register a name: such an agent must not be able to drain the fleet."""
    drifter = registered(embedded.url, tmp_path, "drifter", kind="worker")
    body = drifter._signed("budget", fields(0.25, limit=1e9, spent=1e12))
    answer = httpx.post(f"{embedded.url}/api/agents/{drifter.agent_id}/budget", json=body)
    assert answer.status_code == 403 and "enrolment token" in answer.json()["error"]["message"]
    assert budgets(admin) == []


def test_an_unenrolled_agent_is_told_why_its_model_calls_are_refused(
    embedded: EmbeddedControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import m99
    from m99.errors import ModelCallRefused
    from tests.adapters.lc_fakes import model

    policy = tmp_path / "KILLSWITCH.md"
    policy.write_text(FLEET_POLICY.format(limit=1.0, scope="class", chunk=0.1))
    monkeypatch.setenv("M99_DATA_DIR", str(tmp_path / "data-open"))
    m99.init("open-bot", url=embedded.url, policy=policy, prices=PRICES, exclude=["crewai", "autogen"])
    try:
        with pytest.raises(ModelCallRefused, match=r"fleet budget \(class, \$1.00 a UTC day\).*enrolment token"):
            model("ok", usage=1000).invoke("spend")
    finally:
        m99.shutdown()


def _raw(link: ControlLink, fields: dict[str, Any]) -> dict[str, Any]:
    return link._signed("budget", fields)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"want_usd": -1.0}, 422),
        ({"want_usd": 1e12}, 422),
        ({"spent_usd": -0.5}, 422),
        ({"limit_usd": 0}, 422),
        ({"limit_usd": "1.0"}, 422),  # strict types: no strings for numbers
        ({"scope": "agent:other"}, 422),  # the scope is class or global, the class the registered one
        ({"day": "2026-13-45x"}, 422),
        ({"day": "1999-01-01"}, 400),  # not today at the control plane
        ({"nonce": "short"}, 422),
        ({"extra": 1}, 422),
    ],
)
def test_a_hostile_lease_is_refused_with_no_state_change(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, change: dict[str, Any], status: int, enrol: str
) -> None:
    a = registered(embedded.url, tmp_path, "a", token=enrol)
    body = _raw(a, {**fields(0.25), **change})
    answer = httpx.post(f"{embedded.url}/api/agents/{a.agent_id}/budget", json=body)
    assert answer.status_code == status, answer.text
    assert budgets(admin) == []


def test_a_forged_replayed_or_foreign_lease_is_refused(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, enrol: str
) -> None:
    a, b = registered(embedded.url, tmp_path, "a", token=enrol), registered(embedded.url, tmp_path, "b", token=enrol)
    url = f"{embedded.url}/api/agents/{{}}/budget"
    body = _raw(a, fields(0.25))
    assert httpx.post(url.format(b.agent_id), json=body).status_code == 401  # a's signature on b's id
    tampered = {**body, "want_usd": 0.2}
    assert httpx.post(url.format(a.agent_id), json=tampered).status_code == 401
    assert httpx.post(url.format("agt_nobody"), json=body).status_code == 404
    assert budgets(admin) == []
    assert httpx.post(url.format(a.agent_id), json=body).status_code == 200
    assert httpx.post(url.format(a.agent_id), json=body).status_code == 409  # replayed
    older = _raw(a, fields(0.25))
    assert httpx.post(url.format(a.agent_id), json=_raw(a, fields(0.25))).status_code == 200
    assert httpx.post(url.format(a.agent_id), json=older).status_code == 409  # signed before the last one
    (group,) = budgets(admin)
    assert group["granted_usd"] == pytest.approx(0.5)
    # a heartbeat signed after a lease is not refused for it: leases have their sequence of their own
    assert a.heartbeat()["agent_id"] == a.agent_id


# -- the agent's side -----------------------------------------------------------------------------------------


def test_an_unbound_or_unreachable_fleet_budget_grants_nothing() -> None:
    fleet = FleetAllowance("global", 1.0, 0.1)
    assert fleet.request_more(0.05) == 0.0 and "not connected" in fleet.last_error
    calls: list[dict[str, Any]] = []

    def down(fields: dict[str, Any], timeout: float) -> dict[str, Any]:
        calls.append(fields)
        raise ConnectionError("control plane unreachable")

    fleet.bind(down)
    assert fleet.request_more(0.05) == 0.0 and "unreachable" in fleet.last_error
    assert fleet.request_more(0.05) == 0.0 and len(calls) == 1  # no new request before the retry delay

    answers: list[dict[str, Any]] = []

    def replayed(sent: dict[str, Any], timeout: float) -> dict[str, Any]:
        # a signed answer captured earlier (another nonce), or one for this request but another scope
        doc = {"type": "budget.lease", "nonce": sent["nonce"], "day": sent["day"], "scope": "global"}
        doc.update({"granted_usd": 9.0, "spent_usd": 0.0})
        doc.update(answers.pop(0))
        return doc

    fleet = FleetAllowance("class", 1.0, 0.1)
    fleet.bind(replayed)
    for wrong in ({"nonce": "0" * 32}, {"scope": "global"}, {"day": "1999-01-01"}, {"granted_usd": float("nan")}):
        answers.append(wrong)
        assert fleet.sync() == 0.0 and fleet.granted == 0.0, wrong
    answers.append({"scope": "class:worker", "granted_usd": 0.1})
    fleet.sync()
    assert fleet.granted == pytest.approx(0.1) and fleet.last_error == ""


def test_concurrent_calls_that_do_not_fit_lease_one_chunk_not_one_each() -> None:
    from m99.policy.budget import Budget

    leases: list[float] = []

    def grant(sent: dict[str, Any], timeout: float) -> dict[str, Any]:
        time.sleep(0.05)  # the others queue meanwhile
        leases.append(sent["want_usd"])
        total = sum(leases)
        return {"type": "budget.lease", "nonce": sent["nonce"], "day": sent["day"], "scope": "global"} | {
            "granted_usd": total,
            "spent_usd": 0.0,
        }

    fleet = FleetAllowance("global", 10.0, 1.0)
    fleet.bind(grant)
    budget = Budget("cost_limit_daily_usd", fleet)
    held: list[Any] = []
    threads = [threading.Thread(target=lambda: held.append(budget.reserve(0.04))) for _ in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r is not None for r in held) and leases == [1.0]  # one chunk covered all twenty


def test_a_closing_process_stops_reserving_and_counts_what_is_in_flight_as_spent(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, enrol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import m99

    policy = tmp_path / "KILLSWITCH.md"
    policy.write_text(FLEET_POLICY.format(limit=1.0, scope="global", chunk=0.25))
    monkeypatch.setenv("M99_ENROL_TOKEN", enrol)
    monkeypatch.setenv("M99_DATA_DIR", str(tmp_path / "data-closing"))
    runtime = m99.init("closing", url=embedded.url, policy=policy, prices=PRICES, exclude=["crewai", "autogen"])
    spend = runtime.guard.policy.engine.spend  # type: ignore[union-attr]
    in_flight = spend.daily.reserve(0.2)  # a call still running as the process closes
    assert in_flight is not None
    spend.daily.settle(spend.daily.reserve(0.03), 0.03)
    runtime.session.close()
    (group,) = budgets(admin)
    (share,) = group["agents"]
    assert share["spent_usd"] == pytest.approx(0.23) and share["granted_usd"] == pytest.approx(0.23)
    assert spend.daily.reserve(0.01) is None  # closed: nothing new is admitted, no lease is asked for
    spend.fleet.request_more(0.25)  # a call that was waiting for a lease as the process closed
    assert budgets(admin)[0]["agents"][0]["granted_usd"] == pytest.approx(0.23)  # nothing granted after
    spend.daily.settle(in_flight, 0.2)  # the call in flight still ends
    from m99.session import Session

    again = Session(runtime.guard, embedded.url).start()  # the same Guard in a new session: admitted again
    try:
        assert spend.daily.reserve(0.01) is not None
    finally:
        again.close()
    m99.shutdown()


def test_one_failed_lease_refuses_the_call_without_stopping_the_agent(
    embedded: EmbeddedControlPlane, tmp_path: Path, enrol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import m99
    from m99.errors import ModelCallRefused
    from m99.policy import Stage
    from tests.adapters.lc_fakes import model

    policy = tmp_path / "KILLSWITCH.md"
    policy.write_text(FLEET_POLICY.format(limit=1.0, scope="global", chunk=0.1))
    monkeypatch.setenv("M99_ENROL_TOKEN", enrol)
    monkeypatch.setenv("M99_DATA_DIR", str(tmp_path / "data-blip"))
    runtime = m99.init("blip", url=embedded.url, policy=policy, prices=PRICES, exclude=["crewai", "autogen"])
    try:
        engine = runtime.guard.policy.engine  # type: ignore[union-attr]
        fleet = engine.spend.fleet
        real = fleet._send
        failures = [ConnectionError("a dropped connection")]

        def blip(fields: dict[str, Any], timeout: float) -> dict[str, Any]:
            if failures:
                raise failures.pop()
            return real(fields, timeout)

        fleet.bind(blip)
        chat = model("ok", usage=1000)
        with pytest.raises(ModelCallRefused, match="no lease: a dropped connection"):
            chat.invoke("spend")
        assert engine.stage == Stage.NONE  # refused, not a breach of the day's limit
        fleet.bind(blip)  # (the retry delay, over)
        chat.invoke("spend")
        assert engine.stage == Stage.NONE and engine.spend.daily.spent == pytest.approx(0.01)
    finally:
        m99.shutdown()


def test_a_restart_whose_first_answer_failed_adopts_the_spend_at_its_next_lease(
    embedded: EmbeddedControlPlane, tmp_path: Path, enrol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import m99
    from tests.adapters.lc_fakes import model

    policy = tmp_path / "KILLSWITCH.md"
    policy.write_text(FLEET_POLICY.format(limit=1.0, scope="global", chunk=0.1))
    monkeypatch.setenv("M99_ENROL_TOKEN", enrol)
    monkeypatch.setenv("M99_DATA_DIR", str(tmp_path / "one"))
    runtime = m99.init("phoenix", url=embedded.url, policy=policy, prices=PRICES, exclude=["crewai", "autogen"])
    chat = model("ok", usage=1000)
    for _ in range(7):
        chat.invoke("spend")  # the 7th needs a second lease: the control plane learns $0.06 spent
    runtime.session.close(deregister=False)
    m99.shutdown()
    monkeypatch.setenv("M99_DATA_DIR", str(tmp_path / "two"))  # another machine, and its first sync fails
    monkeypatch.setattr(FleetAllowance, "sync", lambda self: 0.0)
    runtime = m99.init("phoenix", url=embedded.url, policy=policy, prices=PRICES, exclude=["crewai", "autogen"])
    try:
        spend = runtime.guard.policy.engine.spend  # type: ignore[union-attr]
        assert spend.daily.spent == 0.0
        for _ in range(7):
            chat.invoke("spend")  # the first lease's answer carries the spend the control plane holds
        assert spend.daily.spent == pytest.approx(0.06 + 0.07)
    finally:
        m99.shutdown()


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import m99
    from m99.errors import ModelCallRefused
    from tests.adapters.lc_fakes import model

    url, name, policy, go = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    prices = {"*": {"input": 10.0, "output": 10.0}}
    runtime = m99.init(name, kind="researcher", url=url, policy=policy, prices=prices, exclude=["crewai", "autogen"])
    chat = model("ok", usage=1000)  # each call costs 1000 tokens = $0.01; reserves ~4100 tokens first
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    sent = refused = 0
    for _ in range(200):
        try:
            chat.invoke("spend")
            sent += 1
        except ModelCallRefused:
            refused += 1
            break
        time.sleep(0.005)
    spend = runtime.guard.policy.engine.spend
    print(json.dumps({"sent": sent, "refused": refused, "spent": spend.daily.spent, "fleet": spend.fleet.status()}))
    m99.shutdown()
    """
)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_two_processes_share_one_fleet_budget_and_never_spend_past_it(
    embedded: EmbeddedControlPlane,
    admin: httpx.Client,
    tmp_path: Path,
    children: list[subprocess.Popen[str]],
    enrol: str,
) -> None:
    limit, chunk = 0.3, 0.05
    policy = tmp_path / "KILLSWITCH.md"
    policy.write_text(FLEET_POLICY.format(limit=limit, scope="class", chunk=chunk))
    go = tmp_path / "go"
    for name in ("left", "right"):
        env = {**os.environ, "M99_DATA_DIR": str(tmp_path / f"data-{name}"), "PYTHONPATH": str(ROOT)}
        env["M99_ENROL_TOKEN"] = enrol
        env.pop("M99_POLICY", None)
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, embedded.url, name, str(policy), str(go)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in children:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", p.stderr.read() if p.stderr else ""
    go.touch()
    results = []
    for p in children:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    spent = sum(r["spent"] for r in results)
    worst = (4096 + 10) * 10.0 / 1e6  # one call's reserved worst case
    assert all(r["sent"] > 0 and r["refused"] == 1 for r in results), results  # both spent, both were stopped
    assert spent <= limit + 1e-9  # the worst cases held: not a cent past the fleet's limit
    assert spent >= limit - 2 * (worst + chunk)  # and the budget was used, not refused early
    (group,) = budgets(admin)
    assert group["scope"] == "class:researcher" and group["granted_usd"] <= limit + 1e-9
    # both closed and gave back what they did not spend: what is granted is what was spent
    assert {s["agent"]: round(s["granted_usd"], 6) for s in group["agents"]} == {
        s["agent"]: round(s["spent_usd"], 6) for s in group["agents"]
    }
    assert group["spent_usd"] == pytest.approx(spent)
    executions = [e for e in admin.get("/api/executions").json() if e["origin"] == "policy"]
    assert len(executions) == 2 and all("cost_limit_daily_usd" in e["reason"] for e in executions)
    result = CliRunner().invoke(main, ["policy", "budgets", "--url", embedded.url, "--token", embedded.token])
    assert result.exit_code == 0, result.output
    assert "class:researcher: granted" in result.output and "left: granted" in result.output


def test_a_restart_under_the_same_name_takes_its_share_up_again(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enrol: str
) -> None:
    import m99
    from tests.adapters.lc_fakes import model

    policy = tmp_path / "KILLSWITCH.md"
    policy.write_text(FLEET_POLICY.format(limit=1.0, scope="global", chunk=0.1))
    monkeypatch.setenv("M99_DATA_DIR", str(tmp_path / "first"))
    monkeypatch.setenv("M99_ENROL_TOKEN", enrol)

    def start() -> Any:
        runtime = m99.init("bot", url=embedded.url, policy=policy, prices=PRICES, exclude=["crewai", "autogen"])
        return runtime, runtime.guard.policy.engine.spend

    runtime, spend = start()
    chat = model("ok", usage=1000)  # $0.01 a call, ~$0.041 reserved: the 7th call needs a second chunk
    for _ in range(8):
        chat.invoke("spend")
    assert spend.daily.spent == pytest.approx(0.08) and spend.fleet.granted == pytest.approx(0.2)
    runtime.session.close(deregister=False)  # it dies: no give-back, its grant stays the fleet's
    m99.shutdown()
    (group,) = budgets(admin)
    assert group["granted_usd"] == pytest.approx(0.2) and group["spent_usd"] == pytest.approx(0.06)  # at the lease

    runtime, spend = start()  # the same machine: its ledger has the day's spend, the server its grant
    assert spend.daily.spent == pytest.approx(0.08) and spend.daily.allowance == pytest.approx(0.2)
    chat.invoke("spend")
    m99.shutdown()  # closes: reports 0.09 and gives the rest back
    (group,) = budgets(admin)
    assert group["granted_usd"] == pytest.approx(0.09) and group["spent_usd"] == pytest.approx(0.09)

    monkeypatch.setenv("M99_DATA_DIR", str(tmp_path / "second"))  # another machine: no local ledger
    runtime, spend = start()
    assert spend.daily.spent == pytest.approx(0.09) and spend.daily.allowance == pytest.approx(0.09)
    m99.shutdown()
