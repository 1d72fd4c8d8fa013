"""The dashboard in a real browser: Playwright driving the system's Chromium against a real control plane
on loopback, with real agents.  Every request the page makes beyond 127.0.0.1 is blocked and counted:
the dashboard and the API docs must work with no internet."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from m99 import M99Client, M99KillSwitchTriggered
from m99.control import Settings
from m99.link import ControlLink
from m99.protocol import sign_request
from m99.server import EmbeddedControlPlane

from .servers import ServeProcess

CHROMIUM = "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

Page = sync_api.Page
expect = sync_api.expect

pytestmark = pytest.mark.timeout(90)
WAIT_MS = 10_000  # the longest any one thing may take to show


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Tab:
    """One browser tab with everything beyond loopback blocked, and what the page did wrong recorded."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(accept_downloads=True)
        self.blocked: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.context.route(re.compile(r"^(?!(http|ws)://127\.0\.0\.1[:/]|blob:|data:).*"), self._block)
        self.page: Page = self.context.new_page()
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.set_default_timeout(WAIT_MS)

    def _block(self, route: Any) -> None:
        self.blocked.append(route.request.url)
        route.abort()

    def _dialog(self, dialog: Any) -> None:  # the dashboard uses none: any alert is a script that ran
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def login(self, url: str, token: str) -> Page:
        self.page.goto(url + "/")
        self.page.fill("#login-token", token)
        self.page.click("#login-form button[type=submit]")
        expect(self.page.locator("#conn")).to_have_text("live")
        return self.page

    def close(self) -> None:
        self.context.close()
        assert not self.blocked, f"the page tried to leave loopback: {self.blocked}"
        assert not self.errors, f"the page's scripts failed: {self.errors}"


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    opened = Tab(browser)
    yield opened
    opened.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[EmbeddedControlPlane]:
    with EmbeddedControlPlane(tmp_path / "data", settings=Settings(heartbeat_interval=30)) as cp:
        yield cp


def api(cp: EmbeddedControlPlane, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=cp.url, timeout=30, headers={"Authorization": f"Bearer {token or cp.token}"})


def agent_row(page: Page, name: str) -> Any:
    return page.locator(f'#agents tr[data-agent="{name}"]')


def test_login_with_a_token_against_m99_serve(tab: Tab, tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "serve").start()
    try:
        page = tab.page
        page.goto(server.url + "/")
        expect(page.locator("#login-view")).to_be_visible()
        page.fill("#login-token", "not-a-token")
        page.click("#login-form button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("refused the token")
        expect(page.locator("#board")).to_be_hidden()
        page.fill("#login-token", server.token)
        page.click("#login-form button[type=submit]")
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#who")).to_have_text(re.compile(r"token .+ \(fleet\)"))
        expect(page.locator("#chain")).to_contain_text("verified")
        assert server.token not in page.url
        assert page.evaluate("sessionStorage.getItem('m99.token')") == server.token
        assert page.evaluate("localStorage.length") == 0
        page.reload()  # the tab keeps its session
        expect(page.locator("#conn")).to_have_text("live")
        page.click("#logout")
        expect(page.locator("#login-view")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('m99.token')") is None
    finally:
        server.kill()


def test_an_enrolment_token_cannot_log_in(plane: EmbeddedControlPlane, tab: Tab) -> None:
    with api(plane) as admin:
        enrol = admin.post("/api/tokens", json={"name": "pool", "role": "agent"}).json()["token"]
    with api(plane, enrol) as as_agent:
        refusal = as_agent.get("/api/status")
    assert refusal.status_code == 403
    page = tab.page
    page.goto(plane.url + "/")
    page.fill("#login-token", enrol)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("cannot log in: " + refusal.json()["error"]["message"])
    expect(page.locator("#board")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('m99.token')") is None


def test_an_agent_appears_live_and_its_heartbeat_age_counts(plane: EmbeddedControlPlane, tab: Tab) -> None:
    page = tab.login(plane.url, plane.token)
    expect(page.locator("#agents tbody")).to_contain_text("no agent registered")
    with M99Client(plane.url) as client:
        client.register("live-one", "autonomous", framework="langchain")
        row = agent_row(page, "live-one")
        expect(row).to_contain_text("autonomous")
        expect(row).to_contain_text("langchain")
        expect(row.locator(".state")).to_have_text("alive")
        expect(row.locator(".level")).to_have_text("running")
        first = row.locator("td").nth(6).inner_text()
        expect(row.locator("td").nth(6)).not_to_have_text(first, timeout=3000)  # the age ticks by itself
        expect(row.locator("td").nth(7)).to_contain_text("left")  # the lease
        expect(page.locator("#scopes option[value='agent:live-one']")).to_have_count(1)
    assert page.locator("#conn").inner_text() == "live"


def test_the_feed_reconnects_after_the_server_restarts(tab: Tab, tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "serve").start()
    try:
        page = tab.login(server.url, server.token)
        server.kill()
        expect(page.locator("#conn")).to_have_text(re.compile("reconnecting"))
        port = server.port
        again = ServeProcess(tmp_path / "serve")
        again.port, again.url = port, server.url
        server = again.start()
        expect(page.locator("#conn")).to_have_text("live", timeout=20_000)
    finally:
        server.kill()


def test_arm_execute_halts_the_row_with_its_time_to_halt_then_restore(plane: EmbeddedControlPlane, tab: Tab) -> None:
    with M99Client(plane.url) as client:
        client.register("worker-1", "autonomous")
        page = tab.login(plane.url, plane.token)
        expect(agent_row(page, "worker-1")).to_be_visible()
        arm = page.locator("#arm-form")
        arm.locator("input[name=by]").fill("ops@example.com")
        arm.locator("input[name=scope]").fill("agent:worker-1")
        arm.locator("input[name=reason]").fill("runaway loop")
        arm.locator("select[name=level]").select_option("3")
        arm.locator("button[type=submit]").click()
        expect(page.locator("#msg")).to_contain_text("armed auth_")
        armed = page.locator("#armed tbody tr[data-auth]")
        expect(armed).to_have_count(1)
        expect(armed).to_contain_text("agent:worker-1")
        countdown = armed.locator("td").nth(5)
        expect(countdown).to_contain_text("min")  # a five-minute window, counting down
        before = countdown.inner_text()
        expect(countdown).not_to_have_text(before, timeout=3000)

        armed.locator("button[data-action=execute]").click()
        dialog = page.locator("#confirm-dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("worker-1")
        expect(dialog).to_contain_text("L3 tool-call freeze")
        expect(page.locator("#confirm-phrase-row")).to_be_hidden()  # L3 needs no typed phrase
        page.click("#confirm-ok")
        expect(page.locator("#msg")).to_contain_text("executed exe_")

        row = agent_row(page, "worker-1")
        expect(row.locator(".level")).to_have_text("L3")
        expect(row.locator(".halted")).to_have_text(re.compile(r"halted in \d+\.\d ms \(exe_"))
        execution = page.locator("#executions tbody tr[data-execution]").first
        expect(execution.locator('[data-halted="worker-1"]')).to_have_text(re.compile(r"halted in \d+\.\d ms"))
        expect(execution).to_contain_text("1 of 1 confirmed")
        expect(page.locator("#directives tbody tr[data-directive]")).to_have_count(1)
        expect(page.locator("#armed tbody")).to_contain_text("nothing armed")
        expect(page.locator("#audit tbody")).to_contain_text("execution.completed")
        with pytest.raises(M99KillSwitchTriggered):
            client.check_status()

        page.locator("#directives button").first.click()  # prefills the restore form with the scope
        undo = page.locator("#undo-form")
        expect(undo.locator("input[name=scope]")).to_have_value("agent:worker-1")
        undo.locator("input[name=reason]").fill("investigated")
        undo.locator("button[value=restore]").click()
        expect(page.locator("#msg")).to_contain_text("restored agent:worker-1: 1 directive(s) lifted")
        expect(row.locator(".level")).to_have_text("running")
        expect(page.locator("#directives tbody")).to_contain_text("no directive is active")
        deadline = time.monotonic() + 5
        while client.level and time.monotonic() < deadline:
            time.sleep(0.05)
        client.check_status()  # the agent runs again


def test_a_large_fleet_shows_the_held_agents_first(tab: Tab, tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "fleet", settings=Settings(heartbeat_interval=30, register_rate=0)) as plane:
        for n in range(505):
            ControlLink(plane.url).register(f"a-{n:03d}", "bulk")
        ControlLink(plane.url).register("zz-held", "odd")
        with api(plane) as admin:
            auth = admin.post("/api/arm", json={"by": "ops@example.com", "reason": "r", "scope": "class:odd"}).json()
            admin.post("/api/execute", json={"authorization_id": auth["id"]}).raise_for_status()
        page = tab.login(plane.url, plane.token)
        expect(page.locator("#agents-more")).to_have_text(
            "showing 500 of 506 agents (held and silent first); m99 agents lists them all"
        )
        expect(page.locator("#agents tbody tr[data-agent]")).to_have_count(500)
        expect(page.locator("#agents tbody tr[data-agent]").first).to_have_attribute("data-agent", "zz-held")
        with api(plane) as admin:
            head = admin.get("/api/status").json()["audit_head"]["seq"]
        assert head > 500
        expect(page.locator("#audit tbody tr").first).to_have_attribute("data-seq", str(head))  # newest first
        page.click("#logout")  # close the feed before the server stops


def test_an_unconfirmed_halt_shows_in_red(plane: EmbeddedControlPlane, tab: Tab) -> None:
    # A registered agent that never reads its stream nor acknowledges: its halt is never confirmed.
    link = ControlLink(plane.url)
    link.register("mute-1", "autonomous")
    with api(plane) as admin:
        auth = admin.post("/api/arm", json={"by": "ops@example.com", "reason": "r", "scope": "agent:mute-1"}).json()
        admin.post("/api/execute", json={"authorization_id": auth["id"]}).raise_for_status()
    page = tab.login(plane.url, plane.token)
    execution = page.locator("#executions tbody tr[data-execution]").first
    expect(execution.locator('[data-unconfirmed="mute-1"]')).to_have_text("mute-1: NOT confirmed")
    assert "rgb(255, 102, 102)" == execution.locator('[data-unconfirmed="mute-1"]').evaluate(
        "e => getComputedStyle(e).color"
    )
    expect(agent_row(page, "mute-1").locator(".unconfirmed")).to_contain_text("NOT confirmed")


def test_a_viewer_tokens_execute_is_refused_with_the_servers_message(plane: EmbeddedControlPlane, tab: Tab) -> None:
    link = ControlLink(plane.url)
    link.register("target-1", "autonomous")
    with api(plane) as admin:
        viewer = admin.post("/api/tokens", json={"name": "watcher", "role": "viewer"}).json()["token"]
        auth = admin.post("/api/arm", json={"by": "ops@example.com", "reason": "r", "scope": "agent:target-1"}).json()
    page = tab.login(plane.url, viewer)
    expect(page.locator("#who")).to_have_text("token watcher (viewer)")
    page.locator("#armed button[data-action=execute]").click()
    page.click("#confirm-ok")
    with api(plane, viewer) as as_viewer:
        refusal = as_viewer.post("/api/execute", json={"authorization_id": auth["id"]})
    assert refusal.status_code == 403
    expect(page.locator("#msg")).to_have_text("refused: " + refusal.json()["error"]["message"])
    expect(page.locator("#msg")).to_have_class(re.compile("error"))
    with api(plane) as admin:
        assert admin.get(f"/api/authorizations/{auth['id']}").json()["status"] == "armed"  # nothing changed
    # Arming is refused the same way, with the server's words.
    arm = page.locator("#arm-form")
    arm.locator("input[name=by]").fill("watcher")
    arm.locator("input[name=reason]").fill("try")
    arm.locator("button[type=submit]").click()
    expect(page.locator("#msg")).to_contain_text("refused:")
    expect(page.locator("#armed tbody tr[data-auth]")).to_have_count(1)


def test_l6_needs_the_typed_phrase(plane: EmbeddedControlPlane, tab: Tab) -> None:
    page = tab.login(plane.url, plane.token)
    arm = page.locator("#arm-form")
    arm.locator("input[name=by]").fill("ops@example.com")
    arm.locator("input[name=scope]").fill("agent:nobody-yet")
    arm.locator("input[name=reason]").fill("pre-emptive fleet stop")
    arm.locator("select[name=level]").select_option("6")
    arm.locator("input[name=allow_empty]").check()
    arm.locator("button[type=submit]").dblclick()  # armed once
    expect(page.locator("#msg")).to_contain_text("KILL FLEET agent:nobody-yet")
    page.wait_for_timeout(300)
    expect(page.locator("#armed tbody tr[data-auth]")).to_have_count(1)
    page.locator("#armed button[data-action=execute]").click()
    expect(page.locator("#confirm-phrase")).to_have_text("KILL FLEET agent:nobody-yet")
    page.fill("#confirm-input", "kill it")
    page.click("#confirm-ok")
    expect(page.locator("#msg")).to_have_text("refused: L6 needs the typed confirmation 'KILL FLEET agent:nobody-yet'")
    expect(page.locator("#armed tbody tr[data-auth]")).to_have_count(1)
    page.locator("#armed button[data-action=execute]").dblclick()  # one dialog, one execute, however pressed
    page.fill("#confirm-input", "KILL FLEET agent:nobody-yet")
    page.click("#confirm-ok")
    expect(page.locator("#msg")).to_contain_text("executed exe_")
    page.wait_for_timeout(500)
    expect(page.locator("#msg")).to_contain_text("executed exe_")  # no second attempt refused after it
    expect(page.locator("#directives tbody tr[data-directive]")).to_contain_text("L6")
    # Disarm from the page, too.
    arm.locator("select[name=level]").select_option("3")
    arm.locator("button[type=submit]").click()
    expect(page.locator("#armed tbody tr[data-auth]")).to_have_count(1)
    page.locator("#armed button[data-action=disarm]").click()
    expect(page.locator("#msg")).to_contain_text("disarmed auth_")
    expect(page.locator("#armed tbody")).to_contain_text("nothing armed")


HOSTILE = '<img src=x onerror="window.__m99_pwned=1;alert(1)">'


def test_hostile_values_render_as_text_and_run_nothing(plane: EmbeddedControlPlane, tab: Tab) -> None:
    # Names and kinds follow the name rules; an agent's host is free text, and so is an arm's reason.
    link = ControlLink(plane.url)
    body = link.registration_body("hostile-1", "autonomous")
    body.pop("signature")
    body["host"] = HOSTILE
    answer = httpx.post(f"{plane.url}/api/agents/register", json=sign_request(link.key, "register", "hostile-1", body))
    assert answer.status_code == 200, answer.text
    page = tab.login(plane.url, plane.token)
    row = agent_row(page, "hostile-1")
    expect(row.locator("td").nth(3)).to_have_text(HOSTILE)
    arm = page.locator("#arm-form")
    arm.locator("input[name=by]").fill("ops@example.com")
    arm.locator("input[name=scope]").fill("agent:hostile-1")
    arm.locator("input[name=reason]").fill(HOSTILE)
    arm.locator("button[type=submit]").click()
    expect(page.locator("#armed tbody tr[data-auth] td").nth(4)).to_have_text(HOSTILE)
    expect(page.locator("#audit tbody")).to_contain_text("onerror")
    page.locator("#armed button[data-action=execute]").click()
    expect(page.locator("#confirm-body")).to_contain_text(HOSTILE)
    page.click("#confirm-ok")
    expect(page.locator("#executions tbody tr[data-execution]").first).to_contain_text(HOSTILE)
    page.wait_for_timeout(300)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__m99_pwned") is None
    assert not tab.dialogs


def test_the_dashboard_never_writes_html_from_data() -> None:
    script = (Path(__file__).parent.parent / "core" / "server" / "static" / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, f"dashboard.js uses {sink}"


def test_the_page_forbids_inline_script_and_framing(plane: EmbeddedControlPlane) -> None:
    page = httpx.get(plane.url + "/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    for asset, media in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        answer = httpx.get(f"{plane.url}/static/{asset}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media)
    assert httpx.get(f"{plane.url}/static/..%2F__init__.py").status_code == 404
    assert httpx.get(f"{plane.url}/static/dashboard.html").status_code == 404


def test_case_pack_download_saves_the_file_or_shows_the_servers_error(plane: EmbeddedControlPlane, tab: Tab) -> None:
    link = ControlLink(plane.url)
    link.register("packed-1", "autonomous")
    with api(plane) as admin:
        auth = admin.post("/api/arm", json={"by": "ops@example.com", "reason": "r", "scope": "agent:packed-1"}).json()
        execution_id = admin.post("/api/execute", json={"authorization_id": auth["id"]}).json()["execution_id"]
        served = admin.get(f"/api/executions/{execution_id}/casepack")
    page = tab.login(plane.url, plane.token)
    button = page.locator(f'#executions tr[data-execution="{execution_id}"] button[data-action=casepack]')
    if served.status_code == 200:
        with page.expect_download() as download:
            button.click()
        # The server's case pack of this execution, as saved by the browser: it verifies offline against
        # the server's key (each build is signed afresh, so its bytes are not those of the fetch above).
        from m99.evidence.casepack import verify

        saved = Path(download.value.path()).read_bytes()
        report = verify(saved, public_key=plane.server_key)
        assert report.execution_id == execution_id and saved[:2] == served.content[:2] == b"PK"
    else:
        button.click()
        expect(page.locator("#msg")).to_have_text(f"case pack of {execution_id}: " + served.json()["error"]["message"])


def test_api_docs_render_offline(plane: EmbeddedControlPlane, tab: Tab) -> None:
    page = tab.page
    seen: list[Any] = []
    page.on("request", lambda request: seen.append(request))
    page.goto(plane.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("M99 control plane")
    expect(page.locator(".opblock-summary-path", has_text="/api/execute").first).to_be_visible()
    page.goto(plane.url + "/redoc")
    expect(page.locator("h1", has_text="M99 control plane")).to_be_visible()
    page.wait_for_timeout(500)
    assert any(request.url.endswith("/openapi.json") for request in seen)
    # Nothing reached the network beyond loopback (the route would have caught it); what ReDoc's bundle
    # asks of its vendor's CDN (its logo) the page's policy stops inside the browser.
    assert not tab.blocked
    elsewhere = [(r.url, r.failure) for r in seen if not r.url.startswith(plane.url)]
    assert all(failure == "csp" for _, failure in elsewhere), elsewhere


def test_drills_show_their_schedule_and_each_drill_its_time_to_halt(plane: EmbeddedControlPlane, tab: Tab) -> None:
    with M99Client(plane.url) as client, api(plane) as admin:
        client.register("drilled-1", "autonomous")
        scheduled = admin.post("/api/drills/schedule", json={"every_seconds": 86400, "by": "ops@example.com"})
        assert scheduled.status_code == 200, scheduled.text
        page = tab.login(plane.url, plane.token)
        drills = page.locator("#drills")
        expect(drills).to_contain_text("every 1 d")
        expect(drills).to_contain_text("OVERDUE")  # scheduled, never drilled
        report = admin.post(
            "/api/drill", json={"scope": "agent:drilled-1", "level": 3, "by": "ops@example.com", "reason": "drill"}
        )
        assert report.status_code == 200, report.text
        # The drill arrives live: its execution with the agent's confirmed time-to-halt, the schedule met.
        row = page.locator("#executions tbody tr", has_text="drill").first
        expect(row).to_contain_text("drilled-1")
        expect(row).to_contain_text("ms")
        expect(drills).to_contain_text("last drill")
        expect(drills).not_to_contain_text("OVERDUE")
