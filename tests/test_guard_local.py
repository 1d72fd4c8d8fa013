"""The Guard's in-process enforcement, level by level, with real env vars, sockets and processes."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from m99 import network
from m99.credentials import REDACTED, RevokedCredential
from m99.errors import ConfigError, LeaseExpired, M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused
from m99.guard import Guard, current_guard
from m99.network import ConnectionRefusedByM99

from .servers import serving

SECRET = "sk-test-0123456789abcdef"
DB_PASSWORD = "correct-horse-battery-staple"


# -- fixtures ------------------------------------------------------------------------------------------


class Terminations:
    """A recording terminator, so L5/L6 can be tested in-process."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, grace: float) -> None:
        self.calls.append(grace)


@pytest.fixture
def make_guard() -> Iterator[Callable[..., Guard]]:
    made: list[Guard] = []

    def make(name: str = "research-bot", **kwargs: Any) -> Guard:
        kwargs.setdefault("terminate", Terminations())
        guard = Guard(name, **kwargs)
        made.append(guard)
        return guard

    yield make
    # Leave no Guard cut or holding credentials for the next test.
    for guard in made:
        guard.set_lease_restored()
        if not guard.terminating:
            guard.apply_state(0)
    made.clear()
    gc.collect()


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do

    def do_GET(self) -> None:
        self.server.requests.append({"path": self.path, "headers": dict(self.headers)})  # type: ignore[attr-defined]
        body = json.dumps({"object": "list", "data": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.requests = []  # type: ignore[attr-defined]
    with serving(server):
        yield server


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    with http_server() as srv:
        yield srv


@pytest.fixture
def env_key() -> Iterator[str]:
    name = "M99_TEST_OPENAI_API_KEY"
    os.environ[name] = SECRET
    yield name
    os.environ.pop(name, None)


def url_of(srv: ThreadingHTTPServer, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{srv.server_address[1]}/ping"


def fetch(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        status: int = resp.status
        return status


# -- level 0 and the hot path ------------------------------------------------------------------------


def test_running_normally_allows_everything(make_guard: Callable[..., Guard]) -> None:
    g = make_guard()
    assert g.level == 0 and not g.frozen and g.allows_messages
    assert g.check_tool("search") is None
    assert g.check_tool("delete_everything") is None
    assert g.check_model() is None
    assert g.check_status() is None
    value = {"password": DB_PASSWORD}
    g.protect_secret(DB_PASSWORD, label="db-password")
    assert g.redact(value) is value  # below L1 nothing is redacted, and nothing is copied


def test_bad_levels_and_names_are_rejected(make_guard: Callable[..., Guard]) -> None:
    g = make_guard()
    for bad in (-1, 7, "3", 2.0, True):
        with pytest.raises(ValueError):
            g.apply_state(bad)  # type: ignore[arg-type]
    assert g.level == 0
    with pytest.raises(ConfigError):
        Guard("")


def test_stale_versions_are_ignored(make_guard: Callable[..., Guard]) -> None:
    g = make_guard()
    assert g.apply_state(3, reason="op", version=5) is True
    assert g.apply_state(0, version=4) is False  # an older push arriving late
    assert g.level == 3
    assert g.apply_state(3, version=5) is False  # the heartbeat repeating the same state
    assert g.apply_state(0, reason="restored", version=6) is True
    assert (g.level, g.version, g.reason) == (0, 6, "restored")


# -- L1 credentials ------------------------------------------------------------------------------------


def test_l1_strips_env_var_and_restores_it_exactly(make_guard: Callable[..., Guard], env_key: str) -> None:
    g = make_guard()
    g.protect_env(env_key)
    assert g.apply_state(1, reason="leak suspected") is True
    assert env_key not in os.environ
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.environ.get({env_key!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "None"  # processes started during L1 get no key either
    assert g.apply_state(0) is True
    assert os.environ[env_key] == SECRET


def test_protecting_during_l1_revokes_at_once(make_guard: Callable[..., Guard], env_key: str) -> None:
    g = make_guard()
    g.apply_state(1)
    g.protect_env(env_key)
    assert env_key not in os.environ
    g.apply_state(0)
    assert os.environ[env_key] == SECRET


def test_l1_revokes_attributes_and_restores_the_same_object(make_guard: Callable[..., Guard]) -> None:
    class Client:
        def __init__(self) -> None:
            self.api_key = "sk-" + "live-" + "987654321"  # a fresh object, not an interned constant
            self.provider = lambda: "sk-from-provider"
            self.config = {"api_key": "sk-config-1234567"}

    client = Client()
    original, provider, config_key = client.api_key, client.provider, client.config["api_key"]
    g = make_guard()
    g.protect_attribute(client, "api_key", label="openai")
    g.protect_attribute(client, "provider", label="provider")
    g.protect_item(client.config, "api_key", label="raw-config")
    g.apply_state(1)
    assert isinstance(client.api_key, RevokedCredential) and not client.api_key  # empty: SDKs fail locally
    assert "openai" in repr(client.api_key)
    with pytest.raises(M99KillSwitchTriggered):
        client.provider()
    assert client.config["api_key"] == ""
    g.apply_state(0)
    assert client.api_key is original
    assert client.provider is provider
    assert client.config["api_key"] is config_key


def test_a_credential_two_guards_protect_comes_back_only_when_both_are_restored(
    make_guard: Callable[..., Guard], env_key: str
) -> None:
    class Client:
        api_key = ""

    client = Client()
    client.api_key = "sk-" + "shared-" + "24680"
    original = client.api_key
    process, agent = make_guard("desk"), make_guard("desk-writer")
    for g in (process, agent):
        g.protect_env(env_key)
        g.protect_attribute(client, "api_key", label="shared client")
    agent.apply_state(1)  # a kill scoped to the agent strips what it shares (fail closed)
    assert env_key not in os.environ and not client.api_key
    process.apply_state(1)
    agent.apply_state(0)  # restored in the "wrong" order: the process still holds them revoked
    assert env_key not in os.environ and not client.api_key
    late = make_guard("desk-late")
    late.protect_env(env_key)  # registered while stripped: it still knows the secret's fingerprint
    assert late.credential_fingerprints()[0]["fingerprint"] == process.credential_fingerprints()[0]["fingerprint"]
    process.apply_state(0)
    assert os.environ[env_key] == SECRET and client.api_key is original
    assert all(not c["revoked"] for c in process.credential_fingerprints() + agent.credential_fingerprints())


def test_frozen_dataclass_attribute_is_still_revoked(make_guard: Callable[..., Guard]) -> None:
    @dataclasses.dataclass(frozen=True)
    class Settings:
        token: str

    settings = Settings("tok-" + "abcdefgh")
    original = settings.token
    g = make_guard()
    g.protect_attribute(settings, "token")
    g.apply_state(1)
    assert settings.token == ""
    g.apply_state(0)
    assert settings.token is original


def test_openai_client_is_refused_locally_at_l1_and_works_after_restore(
    make_guard: Callable[..., Guard], server: ThreadingHTTPServer
) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key=SECRET, base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", max_retries=0)
    g = make_guard()
    g.protect_attribute(client, "api_key", label="openai")
    g.apply_state(1)
    with pytest.raises(Exception, match="authentication"):
        client.models.list()
    assert server.requests == []  # nothing left the process: the key never reached the server
    g.apply_state(0)
    client.models.list()
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_a_credential_that_cannot_be_revoked_does_not_stop_the_other_levels(
    make_guard: Callable[..., Guard],
) -> None:
    class ReadOnly:
        @property
        def api_key(self) -> str:
            return "sk-readonly-key-000"

    g = make_guard()
    g.protect_attribute(ReadOnly(), "api_key", label="stubborn")
    g.apply_state(3)
    with pytest.raises(ToolCallRefused):
        g.check_tool("search")  # fail closed: the freeze still happened
    (entry,) = g.credential_fingerprints()
    assert entry["revoked"] is False and "AttributeError" in entry["failure"]
    assert any("stubborn" in failure for failure in g.snapshot()["enforcement_failures"])


def test_any_redacting_follows_every_guard_of_the_process() -> None:
    from m99.guard import any_redacting, unwatch_redacting, watch_redacting

    told: list[bool] = []

    def watcher() -> None:
        told.append(any_redacting())
        if len(told) == 1:  # (on a's change: the logged traceback keeps that Guard alive)
            raise RuntimeError("a failing watcher does not stop enforcement")

    a = Guard("redact-a", terminate=lambda grace: None)
    b = Guard("redact-b", terminate=lambda grace: None)
    watch_redacting(watcher)
    try:
        assert not any_redacting()
        a.apply_state(1)
        b.apply_state(3)
        assert any_redacting() and b.level == 3
        a.apply_state(0)
        assert any_redacting()  # b still redacts (L3 includes L1)
        b.apply_state(0)
        assert not any_redacting()
        assert told == [True, False]  # told of the two changes of the whole process only
        b.apply_state(1)
    finally:
        unwatch_redacting(watcher)
        a.apply_state(0)
    del b  # a Guard dropped while redacting does not keep the flag up
    gc.collect()
    assert not any_redacting()


def test_fingerprints_never_contain_the_secret(make_guard: Callable[..., Guard], env_key: str) -> None:
    import hashlib

    g = make_guard()
    g.protect_env(env_key, label="openai-env")
    g.protect_secret(DB_PASSWORD, label="db-password")
    prints = g.credential_fingerprints()
    assert {p["label"]: p["kind"] for p in prints} == {"openai-env": "env", "db-password": "secret"}
    by_label = {p["label"]: p["fingerprint"] for p in prints}
    assert by_label["db-password"] == "sha256:" + hashlib.sha256(DB_PASSWORD.encode()).hexdigest()
    assert SECRET not in json.dumps(prints) and DB_PASSWORD not in json.dumps(prints)


def test_redaction_of_nested_structures(make_guard: Callable[..., Guard], env_key: str) -> None:
    Pair = collections.namedtuple("Pair", "left right")
    g = make_guard()
    g.protect_secret(DB_PASSWORD, label="db-password")
    g.protect_env(env_key)
    g.apply_state(1)
    value = {
        "query": f"connect with {DB_PASSWORD} please",
        DB_PASSWORD: "as a key",
        "nested": [("x", {"deep": [SECRET]}), Pair(DB_PASSWORD, 1), {SECRET}],
        "raw": DB_PASSWORD.encode(),
        "buf": bytearray(SECRET.encode()),
        "clean": ["nothing", 42, None],
    }
    out = g.redact(value)
    text = repr(out)
    assert DB_PASSWORD not in text and SECRET not in text
    assert out["query"] == f"connect with {REDACTED} please"
    assert out[REDACTED] == "as a key"
    assert out["nested"][0] == ("x", {"deep": [REDACTED]})
    assert isinstance(out["nested"][1], Pair) and out["nested"][1].left == REDACTED
    assert out["nested"][2] == {REDACTED}
    assert out["raw"] == REDACTED.encode() and isinstance(out["buf"], bytearray)
    assert out["clean"] is value["clean"]  # untouched branches are shared, not copied
    assert value["query"].count(DB_PASSWORD) == 1  # the caller's object is never modified
    clean = {"a": ["b", ("c",)]}
    assert g.redact(clean) is clean


def test_redaction_survives_cycles(make_guard: Callable[..., Guard]) -> None:
    g = make_guard()
    g.protect_secret(DB_PASSWORD)
    g.apply_state(1)
    loop: list[Any] = [DB_PASSWORD]
    loop.append(loop)
    out = g.redact(loop)
    assert out[0] == REDACTED and DB_PASSWORD not in repr(out)


# -- L2 network --------------------------------------------------------------------------------------


def test_l2_refuses_outbound_http_and_restore_allows_it(
    make_guard: Callable[..., Guard], server: ThreadingHTTPServer
) -> None:
    import httpx

    g = make_guard()
    with g.activate():
        assert fetch(url_of(server)) == 200
        assert g.apply_state(2, reason="exfiltration") is True
        assert not g.allows_messages
        with pytest.raises(urllib.error.URLError) as caught:
            fetch(url_of(server))
        assert isinstance(caught.value.reason, ConnectionRefusedByM99)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url_of(server), timeout=5)
        with pytest.raises(ConnectionRefusedByM99):
            socket.getaddrinfo("example.invalid", 443)  # DNS lookups are refused too (exfiltration)
        with pytest.raises(ConnectionRefusedByM99):
            socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
        assert len(server.requests) == 1  # only the request made before L2 arrived
        assert g.apply_state(0) is True
        assert g.allows_messages
        assert fetch(url_of(server)) == 200
        assert httpx.get(url_of(server), timeout=5).status_code == 200
    assert len(server.requests) == 3


def test_l2_shuts_down_connections_opened_before_it(
    make_guard: Callable[..., Guard], server: ThreadingHTTPServer
) -> None:
    import httpx

    g, neighbour = make_guard("pooled-bot"), make_guard("neighbour-bot")
    with g.activate():
        mine = httpx.Client(timeout=5)
        assert mine.get(url_of(server)).status_code == 200
        # What TLS wrapping does: the connected fd moves to a new socket object.
        raw = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
        moved = socket.socket(fileno=raw.detach())
        moved.settimeout(5)
    with neighbour.activate():
        theirs = httpx.Client(timeout=5)
        assert theirs.get(url_of(server)).status_code == 200
    severed = network.state()["severed"]
    try:
        g.apply_state(2)
        # Exactly this agent's two connections: the neighbour's pooled one is left alone.
        assert network.state()["severed"] == severed + 2
        assert moved.recv(1) == b""  # shut down, not left waiting for the server
        with g.activate(), pytest.raises(httpx.TransportError):
            mine.get(url_of(server))  # the pooled keep-alive connection is gone, and a new one refused
        with neighbour.activate():
            assert theirs.get(url_of(server)).status_code == 200  # another agent's connection is untouched
        assert len(server.requests) == 3
    finally:
        mine.close()
        theirs.close()
        moved.close()


def test_l2_keeps_the_control_plane_reachable(make_guard: Callable[..., Guard], server: ThreadingHTTPServer) -> None:
    import httpx

    g = make_guard()
    with http_server() as control_plane:
        port = control_plane.server_address[1]
        network.allow_destination("localhost", port)
        link = httpx.Client(timeout=5)  # the control-plane link's pooled connection, opened before L2
        try:
            with g.activate():
                assert link.get(url_of(control_plane)).status_code == 200
                severed = network.state()["severed"]
                g.apply_state(2)
                assert network.state()["severed"] == severed  # the link's connection is not shut down
                assert link.get(url_of(control_plane)).status_code == 200
                assert fetch(url_of(control_plane)) == 200
                assert fetch(url_of(control_plane, host="localhost")) == 200  # by name too
                with pytest.raises(urllib.error.URLError):
                    fetch(url_of(server))  # same host, another port: refused
        finally:
            link.close()
            network.disallow_destination("localhost", port)
        assert ("localhost", port) not in network.allowed_destinations()
        with g.activate(), pytest.raises(urllib.error.URLError):
            fetch(url_of(control_plane))  # once disallowed, refused like anything else


def test_guards_in_one_process_are_independent(make_guard: Callable[..., Guard], server: ThreadingHTTPServer) -> None:
    quiet, loud = make_guard("quiet-bot"), make_guard("loud-bot")
    loud.apply_state(3, reason="runaway")
    with pytest.raises(ToolCallRefused):
        loud.check_tool("search")
    assert quiet.check_tool("search") is None and quiet.check_model() is None and quiet.check_status() is None
    with quiet.activate():
        assert fetch(url_of(server)) == 200  # the network follows the Guard in context
    with loud.activate(), pytest.raises(urllib.error.URLError):
        fetch(url_of(server))
    with loud.activate():
        with quiet.activate():
            assert current_guard.get() is quiet
        assert current_guard.get() is loud
    assert current_guard.get() is None


PROCESS_WIDE = textwrap.dedent(
    """
    import json, socket, threading
    from m99 import network
    from m99.guard import Guard

    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
    port = srv.getsockname()[1]

    def attempt():
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
            return "ok"
        except network.ConnectionRefusedByM99:
            return "refused"
        finally:
            s.close()

    def in_thread():
        out = []
        t = threading.Thread(target=lambda: out.append(attempt())); t.start(); t.join()
        return out[0]

    seen = {"installed_before_a_guard": network.installed()}
    a, b = Guard("a"), Guard("b")
    seen["installed_with_a_guard"] = network.installed()
    idle = socket.create_connection(("127.0.0.1", port))  # opened with no Guard in context
    idle.settimeout(0.2)

    def idle_state():
        try:
            return "shut down" if idle.recv(1) == b"" else "data"
        except socket.timeout:
            return "open"

    a.apply_state(2)
    seen["one_of_two_cut"] = attempt()
    seen["idle_one_of_two_cut"] = idle_state()
    b.apply_state(3)
    seen["all_cut"] = attempt()
    seen["idle_all_cut"] = idle_state()
    seen["all_cut_thread"] = in_thread()
    b.apply_state(0)
    seen["one_restored"] = attempt()
    network.retire(b)  # b's session closed: only a, at L2, is left
    seen["the_other_retired"] = attempt()
    print(json.dumps(seen))
    """
)


def test_without_a_guard_in_context_the_process_wide_rule_applies() -> None:
    child = subprocess.run([sys.executable, "-c", PROCESS_WIDE], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {
        "installed_before_a_guard": False,  # importing m99 alone adds no audit hook
        "installed_with_a_guard": True,
        "one_of_two_cut": "ok",
        "idle_one_of_two_cut": "open",
        "all_cut": "refused",
        "idle_all_cut": "shut down",  # unowned connections go once every Guard is cut
        "all_cut_thread": "refused",
        "one_restored": "ok",
        "the_other_retired": "refused",
    }


WHOLE_PROCESS = textwrap.dedent(
    """
    import json, socket
    from m99 import network
    from m99.guard import Guard

    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
    port = srv.getsockname()[1]

    def attempt(guard=None):
        s = socket.socket()
        try:
            if guard is None:
                s.connect(("127.0.0.1", port))
            else:
                with guard.activate():
                    s.connect(("127.0.0.1", port))
            return "ok"
        except network.ConnectionRefusedByM99 as exc:
            return "refused for " + exc.agent
        finally:
            s.close()

    process = Guard("desk", whole_process=True)  # what m99.init makes
    writer, editor = Guard("desk-writer"), Guard("desk-editor")  # runtime.agent(...)
    held = socket.create_connection(("127.0.0.1", port))
    with writer.activate():
        writers = socket.create_connection(("127.0.0.1", port))
    for s in (held, writers):
        s.settimeout(0.2)

    def state(s):
        try:
            return "shut down" if s.recv(1) == b"" else "data"
        except socket.timeout:
            return "open"

    seen = {}
    writer.apply_state(2)
    seen["writer_cut"] = [attempt(), attempt(writer), attempt(editor), state(held), state(writers)]
    writer.apply_state(0)
    process.apply_state(2)
    seen["process_cut"] = [attempt(), attempt(writer), attempt(editor), state(held), state(writers)]
    process.apply_state(0)
    seen["restored"] = [attempt(), attempt(writer)]
    print(json.dumps(seen))
    """
)


def test_the_process_guard_cuts_every_connection_of_the_process() -> None:
    child = subprocess.run([sys.executable, "-c", WHOLE_PROCESS], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {
        # A framework agent's L2 cuts its own context (and connections) only ...
        "writer_cut": ["ok", "refused for desk-writer", "ok", "open", "shut down"],
        # ... the process Guard's cuts all of them, whatever Guard is in context.
        "process_cut": ["refused for desk", "refused for desk", "refused for desk", "shut down", "shut down"],
        "restored": ["ok", "ok"],
    }


# -- L3 and L4 -----------------------------------------------------------------------------------------


def test_l3_freezes_tools_models_and_status(make_guard: Callable[..., Guard], env_key: str) -> None:
    g = make_guard()
    g.protect_env(env_key)
    assert g.apply_state(3, reason="operator alice: runaway loop") is True
    assert g.frozen and not g.allows_messages
    assert env_key not in os.environ  # cumulative: L1 applied on the way up
    with pytest.raises(ToolCallRefused) as tool:
        g.check_tool("search")
    assert (tool.value.tool, tool.value.level, tool.value.agent) == ("search", 3, "research-bot")
    assert tool.value.reason == "operator alice: runaway loop"
    with pytest.raises(ModelCallRefused) as model:
        g.check_model()
    assert model.value.level == 3
    with pytest.raises(M99KillSwitchTriggered) as status:
        g.check_status()
    assert type(status.value) is M99KillSwitchTriggered and status.value.level == 3
    assert g.usage["refusals"] == 3
    assert g.apply_state(1) is True  # falling: L3 and L2 undone, L1 kept
    assert g.check_tool("search") is None and g.allows_messages
    assert env_key not in os.environ
    assert g.apply_state(0) is True
    assert os.environ[env_key] == SECRET and not g.frozen


def test_l4_lets_read_only_tools_and_models_run(make_guard: Callable[..., Guard], server: ThreadingHTTPServer) -> None:
    g = make_guard(read_only_tools={"search", "read_file"})
    g.apply_state(4, reason="restrict")
    assert g.frozen
    assert g.check_tool("search") is None and g.check_tool("read_file") is None
    with pytest.raises(ToolCallRefused, match="L4 restriction") as refused:
        g.check_tool("write_file")
    assert refused.value.level == 4
    assert g.check_model() is None  # deliberate: the agent may still observe and reason
    assert g.check_status() is None
    with g.activate(), pytest.raises(urllib.error.URLError):
        fetch(url_of(server))  # L2 still holds under L4
    g.declare_read_only("list_dir")
    assert g.check_tool("list_dir") is None
    g.apply_state(3)  # from L4 back to L3: read-only tools are frozen again
    with pytest.raises(ToolCallRefused):
        g.check_tool("search")


# -- lease ---------------------------------------------------------------------------------------------


def test_no_new_tool_is_offered_while_frozen(make_guard: Callable[..., Guard]) -> None:
    g = make_guard(read_only_tools={"search"})
    assert g.may_offer("search") and g.may_offer("write_file")
    g.apply_state(4)
    assert g.may_offer("search") and not g.may_offer("write_file")
    g.apply_state(3)
    assert not g.may_offer("search") and not g.may_offer("write_file")
    g.apply_state(0)
    g.set_lease_lost("partition")
    assert not g.may_offer("search")
    g.set_lease_restored()
    assert g.may_offer("write_file")


def test_lost_lease_freezes_and_restoring_it_unfreezes(make_guard: Callable[..., Guard], env_key: str) -> None:
    g = make_guard(read_only_tools={"search"})
    g.protect_env(env_key)
    changes: list[tuple[int, int]] = []
    g.on_change(lambda guard, old, new: changes.append((old, new)))
    assert g.set_lease_lost("no heartbeat answer for 90 s") is True
    assert g.frozen and not g.allows_messages and g.lease_lost
    with pytest.raises(ToolCallRefused, match="lease lost"):
        g.check_tool("search")
    with pytest.raises(ModelCallRefused):
        g.check_model()
    with pytest.raises(LeaseExpired) as expired:
        g.check_status()
    assert expired.value.reason == "no heartbeat answer for 90 s"
    assert os.environ[env_key] == SECRET  # a partition freezes; it does not revoke credentials
    assert g.set_lease_lost("still gone") is False
    assert g.set_lease_restored() is True
    assert not g.frozen and g.check_tool("write") is None and g.check_status() is None
    assert changes == [(0, 0), (0, 0)]
    g.apply_state(4)
    g.set_lease_lost("partition")
    with pytest.raises(ToolCallRefused):
        g.check_tool("search")  # under a lost lease even read-only tools stop
    g.set_lease_restored()
    assert g.check_tool("search") is None  # back to L4's own behaviour
    with pytest.raises(ToolCallRefused):
        g.check_tool("write")


def test_fail_open_keeps_running_without_a_lease(make_guard: Callable[..., Guard]) -> None:
    g = make_guard(fail_open=True)
    assert g.set_lease_lost("partition") is False
    assert g.lease_lost and not g.frozen
    assert g.check_tool("search") is None and g.check_model() is None and g.check_status() is None
    g.apply_state(3)  # an explicit level still applies in fail-open mode
    with pytest.raises(ToolCallRefused):
        g.check_tool("search")


# -- L5 / L6 -------------------------------------------------------------------------------------------


def test_l5_runs_evidence_callbacks_then_the_terminator(make_guard: Callable[..., Guard]) -> None:
    terminations = Terminations()
    g = make_guard(terminate=terminations, grace_seconds=2.5)
    order: list[str] = []
    g.on_change(lambda guard, old, new: order.append(f"evidence L{old}->L{new} terms={len(terminations.calls)}"))
    assert g.apply_state(5, reason="authority bob") is True
    assert order == ["evidence L0->L5 terms=0"]
    assert terminations.calls == [2.5]
    assert g.terminating and g.frozen
    with pytest.raises(ModelCallRefused):
        g.check_model()
    with pytest.raises(M99KillSwitchTriggered):
        g.check_status()
    assert g.apply_state(0) is False  # no way back from termination
    assert g.level == 5
    assert g.apply_state(6, reason="fleet") is True
    assert terminations.calls == [2.5]  # terminated once


def test_a_deferred_change_is_enforced_before_its_callbacks_and_terminator_run(
    make_guard: Callable[..., Guard], caplog: pytest.LogCaptureFixture
) -> None:
    terminations = Terminations()
    g = make_guard(terminate=terminations)
    later: list[Callable[[], object]] = []
    seen: list[tuple[int, int]] = []
    g.on_change(lambda guard, old, new: seen.append((old, new)))
    before = time.time()
    assert g.apply_state(3, reason="drill", defer=later.append) is True
    with pytest.raises(ToolCallRefused):  # enforced at once ...
        g.check_tool("search")
    assert before <= g.applied_at <= time.time()
    assert seen == [] and "L0 -> L3" not in caplog.text  # ... the rest waits for the caller's loop
    later.pop()()
    assert seen == [(0, 3)] and "L0 -> L3 (drill)" in caplog.text
    g.apply_state(5, defer=later.append, log=False)
    assert g.terminating and terminations.calls == []
    later.pop()()
    assert seen[-1] == (3, 5) and terminations.calls == [g.grace_seconds]
    assert "L3 -> L5" not in caplog.text  # log=False: the caller logs it


def test_usage_recorded_from_many_threads_adds_up_in_order(make_guard: Callable[..., Guard]) -> None:
    g = make_guard()

    def calls() -> None:
        for i in range(2000):
            g.record_tool_call("search", ok=i % 2 == 0)
            g.record_model_call(tokens=1)

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = g.usage
    assert usage["tool_calls"] == 8000 and usage["tool_errors"] == 4000
    assert usage["model_calls"] == 8000 and usage["tokens"] == 8000
    assert len(g.snapshot()["recent_tool_calls"]) == 64


def test_a_failing_custom_terminator_falls_back_to_the_default() -> None:
    script = textwrap.dedent(
        """
        import time
        from m99.guard import Guard
        def broken(grace):
            raise RuntimeError("terminator bug")
        Guard("doomed", terminate=broken, grace_seconds=0.2).apply_state(5)
        time.sleep(30)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGTERM, child.stderr


TERMINATION = textwrap.dedent(
    """
    import signal, sys, time
    from m99.guard import Guard
    if sys.argv[1] == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    g = Guard("doomed", grace_seconds=float(sys.argv[2]))
    g.on_change(lambda guard, old, new: print(f"evidence L{old}->L{new}", flush=True))
    g.apply_state(int(sys.argv[3]), reason="authority")
    time.sleep(30)
    print("survived", flush=True)
    """
)


@pytest.mark.parametrize("level", [5, 6])
def test_default_terminator_ends_the_process_with_sigterm(level: int) -> None:
    child = subprocess.run(
        [sys.executable, "-c", TERMINATION, "default", "5", str(level)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGTERM, child.stderr
    assert child.stdout.splitlines() == [f"evidence L0->L{level}"]


def test_a_process_ignoring_sigterm_gets_sigkill_after_the_grace_period() -> None:
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", TERMINATION, "ignore-sigterm", "1.0", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.splitlines() == ["evidence L0->L5"]
    assert 1.0 <= elapsed < 20


# -- callbacks, evidence, usage, concurrency -------------------------------------------------------


def test_callback_failure_does_not_reach_the_caller(
    make_guard: Callable[..., Guard], caplog: pytest.LogCaptureFixture
) -> None:
    g = make_guard()
    seen: list[int] = []

    def broken(guard: Guard, old: int, new: int) -> None:
        raise RuntimeError("evidence upload failed")

    g.on_change(broken)
    g.on_change(lambda guard, old, new: seen.append(new))
    assert g.apply_state(3) is True
    assert seen == [3]  # later callbacks still run
    assert "evidence upload failed" in caplog.text
    with pytest.raises(ToolCallRefused):
        g.check_tool("search")
    g.remove_on_change(broken)
    g.apply_state(0)
    assert seen == [3, 0]


def test_snapshot_is_evidence_without_secrets(make_guard: Callable[..., Guard], env_key: str) -> None:
    g = make_guard(kind="autonomous", framework="langchain", recent_tool_calls=3)
    g.protect_env(env_key, label="openai")
    g.protect_secret(DB_PASSWORD, label="db-password")
    g.set_task(f"migrate the database using password {DB_PASSWORD} and key {SECRET}")
    for i in range(5):
        g.record_tool_call(f"tool-{i}", ok=i != 4)
    g.record_tool_call(f"echo {DB_PASSWORD}")
    for level in (0, 1, 3):  # redacted at every level, since the snapshot leaves the process
        g.apply_state(level)
        snap = g.snapshot()
        text = json.dumps(snap)
        assert DB_PASSWORD not in text and SECRET not in text
        assert snap["level"] == level
    assert (snap["agent"], snap["kind"], snap["frameworks"], snap["pid"]) == (
        "research-bot",
        "autonomous",
        ["langchain"],
        os.getpid(),
    )
    assert snap["host"] == socket.gethostname()
    assert REDACTED in snap["task"]
    assert [c["tool"] for c in snap["recent_tool_calls"]] == ["tool-3", "tool-4", f"echo {REDACTED}"]
    assert snap["recent_tool_calls"][1]["ok"] is False
    assert {c["label"] for c in snap["credentials"]} == {"openai", "db-password"}


def test_usage_counts_calls_tokens_cost_and_errors(make_guard: Callable[..., Guard]) -> None:
    g = make_guard()
    g.record_tool_call("search")
    g.record_tool_call("search", ok=False)
    g.record_model_call(tokens=120, cost_usd=0.002)
    g.record_model_call(tokens=30, cost_usd=0.001, ok=False)
    usage = g.usage
    assert usage["tool_calls"] == 2 and usage["model_calls"] == 2
    assert usage["tokens"] == 150 and usage["cost_usd"] == pytest.approx(0.003)
    assert usage["errors"] == 2 and usage["consecutive_failures"] == 1
    usage["tool_calls"] = 99
    assert g.usage["tool_calls"] == 2  # a snapshot, not the live counters


def test_state_changes_from_another_thread_while_checking(make_guard: Callable[..., Guard]) -> None:
    g = make_guard()
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            g.apply_state(3)
            g.apply_state(0)

    flipper = threading.Thread(target=flip)
    flipper.start()
    allowed = refused = 0
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                g.check_tool("search")
                allowed += 1
            except ToolCallRefused:
                refused += 1
    finally:
        stop.set()
        flipper.join(5)
    assert allowed > 0 and refused > 0
    g.apply_state(0)
    assert g.check_tool("search") is None
