"""The canary on the kill path: `m99 serve --canary` pushes a signed ping to a listener on its own push
path; /metrics and `m99 status` say it is healthy, and report it when pushes stop arriving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from m99.control import Settings
from m99.server import EmbeddedControlPlane

from .servers import ServeProcess


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_canary_is_pushed_to_and_reported(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "data", "--canary", "0.2").start()
    try:
        deadline = time.monotonic() + 10
        while metric(serve.url, "m99_canary_ok") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(serve.url, "m99_canary_ok") == 1 and metric(serve.url, "m99_canary_pushes_total") >= 1
        assert metric(serve.url, "m99_canary_last_push_ms") < 2000
        assert "canary is failing" not in serve.cli("status").stdout
    finally:
        serve.kill()


def test_a_broken_push_path_is_reported(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "cp", settings=Settings(canary=0.2)) as cp:
        canary = cp.control.canary
        assert canary is not None
        deadline = time.monotonic() + 10
        while not canary.status()["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert canary.status()["ok"]
        canary.publish = lambda payload, names: None  # the hub stops delivering: pushes no longer arrive
        deadline = time.monotonic() + 10
        while canary.status()["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        status = canary.status()
        assert not status["ok"] and status["failures"] >= 1
        assert metric(cp.url, "m99_canary_ok") == 0
        admin = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        assert admin.get("/api/status").json()["canary"]["ok"] is False
        assert httpx.get(f"{cp.url}/api/canary/events", headers={"X-M99-Canary": "guess"}).status_code == 404
        admin.close()
