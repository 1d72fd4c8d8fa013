"""Real control planes for tests: a `m99 serve` subprocess, or the embedded one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from m99.server import free_port

S = TypeVar("S", bound=HTTPServer)


@contextlib.contextmanager
def serving(server: S) -> Iterator[S]:
    """Serve a standard-library HTTP server on a thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class ServeProcess:
    """`m99 serve` as a real subprocess on a free loopback port and its own data directory."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "M99_DATA_DIR": str(self.data_dir), "M99_URL": self.url}

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m99.cli", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"m99 serve exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("m99 serve did not answer within 30 s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def cli(self, *args: str, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "m99.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"m99 {' '.join(args)} failed ({out.returncode}): {out.stdout}{out.stderr}")
        return out

    def api(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {token or self.token}"})


def json_of(response: httpx.Response) -> Any:
    return response.json()
