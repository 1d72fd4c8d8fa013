"""Fixtures for the adapter tests: offline framework settings, Guards that are always restored,
adapters uninstalled after every test, and a loopback OpenAI-compatible server that records keys.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# Before any framework import: CrewAI must not phone home, prompt, or write under ~/.local/share.
os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["CREWAI_TESTING"] = "true"
os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="m99-crewai-"))
for _name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
    os.environ.pop(_name, None)

from m99.adapters import default_resolver, uninstall_all  # noqa: E402
from m99.adapters._common import _streak  # noqa: E402
from m99.guard import Guard  # noqa: E402

from ..servers import serving  # noqa: E402

SECRET = "sk-m99-test-0123456789abcdef"


@pytest.fixture
def make_guard() -> Iterator[Callable[..., Guard]]:
    """Guards that never terminate the test process and are back at level 0 after the test."""
    made: list[Guard] = []

    def make(name: str = "research-bot", **kwargs: Any) -> Guard:
        kwargs.setdefault("terminate", lambda grace: None)
        guard = Guard(name, **kwargs)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        guard.set_lease_restored()
        if not guard.terminating:
            guard.apply_state(0)
    made.clear()
    gc.collect()


@pytest.fixture
def guard(make_guard: Callable[..., Guard]) -> Guard:
    """The process default Guard, as ``m99.init("research-bot")`` would make it."""
    made = make_guard("research-bot", kind="autonomous", read_only_tools={"search"})
    default_resolver.default = made
    return made


@pytest.fixture(autouse=True)
def _clean_adapters() -> Iterator[None]:
    yield
    uninstall_all()
    default_resolver.default = None
    for name in default_resolver.agents:
        default_resolver.unbind(name)
    _streak.limit = 3


# -- a loopback OpenAI-compatible endpoint ------------------------------------------------------------


class _OpenAIHandler(BaseHTTPRequestHandler):
    server: OpenAIServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        reply = self.server.reply
        payload = {
            "id": "chatcmpl-m99",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "gpt-4o-mini"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class OpenAIServer(ThreadingHTTPServer):
    requests: list[dict[str, Any]]
    reply: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def authorizations(self) -> list[str | None]:
        return [r["headers"].get("Authorization") for r in self.requests]


@contextlib.contextmanager
def _serve() -> Iterator[OpenAIServer]:
    server = OpenAIServer(("127.0.0.1", 0), _OpenAIHandler)
    server.requests = []
    server.reply = "pong"
    with serving(server):
        yield server


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with _serve() as server:
        yield server
