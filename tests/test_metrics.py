"""``GET /metrics``: valid Prometheus text with what an operator alerts on — agents by state, heartbeats,
executions by origin, dead man's switch firings, the time-to-halt histogram, unconfirmed halts, the audit
length — read from memory, so a flood of unauthenticated scrapes does no store work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from m99.control import Settings
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser (so the text is valid)."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(url: str, name: str, **labels: str) -> float:
    return samples(url)[(name, tuple(sorted(labels.items())))]


def fire(admin: httpx.Client, scope: str = "global", level: int = 3) -> dict:
    auth = admin.post("/api/arm", json={"by": "a@example.com", "reason": "r", "scope": scope, "level": level}).json()
    return admin.post("/api/execute", json={"authorization_id": auth["id"]}).json()


@pytest.fixture
def links(embedded: EmbeddedControlPlane) -> Iterator[list[ControlLink]]:
    made = [ControlLink(embedded.url) for _ in range(2)]
    for i, link in enumerate(made):
        link.register(f"metered-{i}", "metered")
    yield made
    for link in made:
        link.close()


def test_an_execution_its_confirmed_halt_and_the_unconfirmed_one(
    embedded: EmbeddedControlPlane, admin: httpx.Client, links: list[ControlLink]
) -> None:
    url = embedded.url
    links[0].heartbeat()
    assert value(url, "m99_agents", status="active") == 2
    assert value(url, "m99_heartbeats_total") == 1
    assert value(url, "m99_executions_total", origin="execute") == 0
    result = fire(admin, scope="class:metered")
    links[0].acknowledge(result["version"], time.time())
    wait_for(lambda: value(url, "m99_halts_unconfirmed", origin="execute") == 1)  # metered-1 never confirmed
    got = samples(url)
    assert got[("m99_executions_total", (("origin", "execute"),))] == 1
    assert got[("m99_time_to_halt_seconds_count", (("origin", "execute"),))] == 1
    halted_in = got[("m99_time_to_halt_seconds_sum", (("origin", "execute"),))]
    assert 0 <= halted_in < 5
    assert got[("m99_time_to_halt_seconds_bucket", (("le", "+Inf"), ("origin", "execute")))] == 1
    assert got[("m99_deadman_firings_total", ())] == 0
    assert got[("m99_agents_held", ())] == 2
    entries = admin.get("/api/audit", params={"limit": 1000}).json()
    assert got[("m99_audit_entries", ())] == len(entries) == entries[-1]["seq"] + 1
    links[1].acknowledge(result["version"], time.time())
    wait_for(lambda: value(url, "m99_halts_unconfirmed", origin="execute") == 0)
    assert value(url, "m99_time_to_halt_seconds_count", origin="execute") == 2


def test_a_dead_mans_switch_firing_is_counted_and_its_halt_stays_unconfirmed(tmp_path: Path) -> None:
    settings = Settings(heartbeat_interval=0.1, missed_heartbeats=2)
    with EmbeddedControlPlane(tmp_path / "d", settings=settings) as cp:
        link = ControlLink(cp.url)
        link.register("goes-quiet", "quiet")
        wait_for(lambda: value(cp.url, "m99_deadman_firings_total") == 1)
        got = samples(cp.url)
        assert got[("m99_executions_total", (("origin", "deadman"),))] == 1
        assert got[("m99_deadman_agents_total", ())] == 1
        assert got[("m99_agents", (("status", "silent"),))] == 1
        wait_for(lambda: value(cp.url, "m99_halts_unconfirmed", origin="deadman") == 1)
        link.close()


def test_scrapes_do_no_store_work(embedded: EmbeddedControlPlane, links: list[ControlLink]) -> None:
    """Unauthenticated and cheap: 200 scrapes, concurrent, open no store snapshot at all (the one recount
    in the background runs on its own clock), and heartbeats go on being answered meanwhile."""
    store = embedded.control.store
    opened = []
    real = store.snapshot

    def counting() -> object:
        opened.append(threading.current_thread().name)
        return real()

    store.snapshot = counting  # type: ignore[method-assign]
    try:
        errors: list[BaseException] = []

        def scrape() -> None:
            try:
                with httpx.Client(base_url=embedded.url, timeout=10) as client:
                    for _ in range(50):
                        assert client.get("/metrics").status_code == 200
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=scrape) for _ in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for _ in range(20):
            links[0].heartbeat()
        for t in threads:
            t.join()
        took = time.monotonic() - started
    finally:
        store.snapshot = real  # type: ignore[method-assign]
    assert not errors, errors
    # Nothing serving a request read the store (the event loop, or the worker threads of sync routes);
    # the background threads (dead man's switch, upkeep, the metrics recount) run on their own clocks.
    assert [name for name in opened if name == "m99-control-plane" or name.startswith("AnyIO")] == []
    assert opened.count("m99-metrics") <= 1 + int(took / 5)
    assert took < 30, took
