"""Shared fixtures: control planes that really run, on loopback and temporary databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from m99.control import Settings
from m99.link import forget_server_keys
from m99.server import EmbeddedControlPlane

from .servers import ServeProcess, serving

# Agent frameworks must never phone home from tests.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TESTING", "true")


@pytest.fixture(autouse=True)
def _agent_keys(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test's agents keep their keys in a directory of its own, and trust no server key pinned by an
    earlier test (control planes come and go on reused ports here)."""
    monkeypatch.setenv("M99_KEY_DIR", str(tmp_path_factory.mktemp("agent-keys")))
    forget_server_keys()
    yield
    forget_server_keys()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """A real `m99 serve` subprocess (the seed quick start's terminal 1)."""
    server = ServeProcess(tmp_path / "data").start()
    yield server
    server.kill()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedControlPlane]:
    """The same server on a background thread: fast to start, real HTTP."""
    with EmbeddedControlPlane(tmp_path / "data", settings=Settings(heartbeat_interval=30)) as cp:
        yield cp


@pytest.fixture
def admin(embedded: EmbeddedControlPlane) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=embedded.url, timeout=30, headers={"Authorization": f"Bearer {embedded.token}"}
    ) as client:
        yield client


@pytest.fixture
def local_site() -> Iterator[str]:
    """A SaaS stand-in on loopback: any GET answers 200."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            return None

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
