"""Several `m99 serve` replicas on one PostgreSQL: a change made on any replica reaches agents connected to
every replica, an authorisation executes once, the audit chain stays one chain, the dead man's switch
fires once, and agents ride out a replica's death and a restart of the database."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from m99.crypto import SigningKey
from m99.guard import Guard
from m99.link import ControlLink
from m99.session import Session

from .pg import PrivatePostgres, fresh_database
from .servers import ServeProcess
from .test_session import wait_for

pytestmark = pytest.mark.postgres


class Cluster:
    """Replicas sharing one database and one signing key, each with its own data directory."""

    def __init__(self, tmp: Path, dsn: str, *extra: str) -> None:
        self.tmp, self.dsn, self.extra = tmp, dsn, extra
        self.key = tmp / "server.key"
        SigningKey.generate().save(self.key)
        self.replicas: list[ServeProcess] = []

    def add(self) -> ServeProcess:
        n = len(self.replicas)
        replica = ServeProcess(self.tmp / f"replica-{n}", "--store", self.dsn, "--key-file", str(self.key), *self.extra)
        replica.start()
        self.replicas.append(replica)
        return replica

    @property
    def urls(self) -> str:
        return ",".join(r.url for r in self.replicas)

    def token(self) -> str:
        for replica in self.replicas:
            path = replica.data_dir / "admin.token"
            if path.exists():
                return path.read_text().strip()
        raise AssertionError("no replica wrote the admin token")

    def api(self, replica: ServeProcess) -> httpx.Client:
        return replica.api(self.token())

    def stop(self) -> None:
        for replica in self.replicas:
            replica.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with fresh_database() as dsn:
        made = Cluster(tmp_path, dsn, "--heartbeat-interval", "0.5", "--missed", "4")
        made.add()
        made.add()
        yield made
        made.stop()


def kill(api: httpx.Client, scope: str = "global", level: int = 3) -> dict:
    auth = api.post("/api/arm", json={"by": "ops@example.com", "reason": "replicas", "scope": scope, "level": level})
    assert auth.status_code == 200, auth.text
    done = api.post("/api/execute", json={"authorization_id": auth.json()["id"]})
    assert done.status_code == 200, done.text
    return done.json()


def session(name: str, url: str) -> Session:
    return Session(Guard(name, kind="worker"), url).start()


def test_an_execute_on_one_replica_halts_agents_connected_to_another(cluster: Cluster) -> None:
    a, b = cluster.replicas
    on_a, on_b = session("on-a", a.url), session("on-b", b.url)
    try:
        with cluster.api(a) as api:
            started = time.monotonic()
            result = kill(api)
            wait_for(lambda: on_a.guard.frozen and on_b.guard.frozen, timeout=5)
            reached = time.monotonic() - started
            assert sorted(result["agents"]) == ["on-a", "on-b"]
            execution = f"/api/executions/{result['execution_id']}"
            wait_for(lambda: api.get(execution).json()["time_to_halt"]["confirmed"] == 2, timeout=10)
        assert reached < 2.0, reached  # pushed through the other replica, not polled
        with cluster.api(b) as api:  # every replica tells the same story
            assert api.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]["confirmed"] == 2
            restored = api.post("/api/restore", json={"scope": "global", "by": "ops@example.com", "reason": "ok"})
            assert restored.status_code == 200
        wait_for(lambda: not on_a.guard.frozen and not on_b.guard.frozen, timeout=5)
    finally:
        on_a.close()
        on_b.close()


def test_racing_executes_on_two_replicas_fire_once(cluster: Cluster) -> None:
    a, b = cluster.replicas
    link = ControlLink(a.url)
    link.register("target")
    with cluster.api(a) as api_a, cluster.api(b) as api_b:
        for _ in range(5):
            auth = api_a.post(
                "/api/arm", json={"by": "ops@example.com", "reason": "race", "scope": "agent:target"}
            ).json()
            answers: list[int] = []
            gate = threading.Barrier(2)

            def go(
                api: httpx.Client,
                auth_id: str = auth["id"],
                gate: threading.Barrier = gate,
                answers: list[int] = answers,
            ) -> None:
                gate.wait()
                answers.append(api.post("/api/execute", json={"authorization_id": auth_id}).status_code)

            threads = [threading.Thread(target=go, args=(api,)) for api in (api_a, api_b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(answers) == [200, 409]
        executions = [e for e in api_b.get("/api/executions").json() if e["origin"] == "execute"]
        assert len(executions) == 5


def test_concurrent_writes_on_replicas_keep_one_audit_chain(cluster: Cluster, tmp_path: Path) -> None:
    ControlLink(cluster.replicas[0].url).register("busy")

    def arm(replica: ServeProcess) -> None:
        with cluster.api(replica) as api:
            for i in range(40):
                assert (
                    api.post(
                        "/api/arm", json={"by": "ops@example.com", "reason": f"r{i}", "scope": "agent:busy"}
                    ).status_code
                    == 200
                )

    threads = [threading.Thread(target=arm, args=(r,)) for r in cluster.replicas for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for replica in cluster.replicas:
        with cluster.api(replica) as api:
            verdict = api.get("/api/audit/verify").json()
            assert verdict["valid"], verdict
            entries = api.get("/api/audit", params={"limit": 1000}).json()
            seqs = [e["seq"] for e in entries]
            assert seqs == list(range(len(seqs)))  # no gap, no duplicate
            assert sum(e["kind"] == "authorization.armed" for e in entries) == 160
    out = tmp_path / "chain.jsonl"
    with cluster.api(cluster.replicas[1]) as api:
        out.write_text("".join(line + "\n" for line in api.get("/api/audit/export").text.splitlines()))
    offline = cluster.replicas[0].cli("audit", "verify", "--jsonl", str(out))
    assert offline.returncode == 0, offline.stderr


def test_the_dead_mans_switch_fires_once_across_replicas(cluster: Cluster) -> None:
    cluster.add()  # three replicas, each watching
    link = ControlLink(cluster.replicas[0].url)
    link.register("mute")  # and then silence
    with cluster.api(cluster.replicas[2]) as api:
        wait_for(lambda: link.fetch_state()["level"] == 3, timeout=20)
        time.sleep(3)  # every replica has had several rounds to fire it again
        entries = api.get("/api/audit", params={"limit": 1000}).json()
        assert sum(e["kind"] == "deadman.evidence" for e in entries) == 1
        assert sum(1 for e in api.get("/api/executions").json() if e["origin"] == "deadman") == 1


def test_a_replica_killed_mid_execute_leaves_a_complete_record_and_its_agents_follow(cluster: Cluster) -> None:
    a, b = cluster.replicas
    guards = [session(f"fleet-{i}", f"{a.url},{b.url}") for i in range(3)]
    try:
        with cluster.api(a) as api_a:
            auth = api_a.post("/api/arm", json={"by": "ops@example.com", "reason": "kill -9", "level": 3}).json()

            def execute() -> None:
                try:
                    api_a.post("/api/execute", json={"authorization_id": auth["id"]})
                except httpx.HTTPError:
                    pass  # the replica died under it

            fired = threading.Thread(target=execute)
            fired.start()
            time.sleep(0.002)
            os.kill(a.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            fired.join(30)
        with cluster.api(b) as api_b:
            state = api_b.get(f"/api/authorizations/{auth['id']}").json()
            if state["status"] == "armed":  # killed before it committed: nothing happened, run it again
                assert api_b.post("/api/execute", json={"authorization_id": auth["id"]}).status_code == 200
                state = api_b.get(f"/api/authorizations/{auth['id']}").json()
            record = api_b.get(f"/api/executions/{state['execution_id']}").json()
            assert record["state"] == "complete" and len(record["agents"]) == 3
            out = b.cli("--token", cluster.token(), "executions", state["execution_id"])
            assert "L3 on global" in out.stdout
            # The agents that were connected to the dead replica come to the live one and end frozen.
            wait_for(lambda: all(s.guard.frozen for s in guards), timeout=20)
            wait_for(
                lambda: api_b.get(f"/api/executions/{state['execution_id']}").json()["time_to_halt"]["confirmed"] == 3,
                timeout=20,
            )
            assert all(not s.guard.lease_lost for s in guards)
    finally:
        for s in guards:
            s.close()


@pytest.mark.slow
def test_a_postgresql_restart_is_ridden_out_and_a_long_outage_fails_closed(tmp_path: Path) -> None:
    pg = PrivatePostgres().start()
    try:
        pg.wait_ready()
        made = Cluster(tmp_path, pg.dsn, "--heartbeat-interval", "0.5", "--lease", "6")
        replica = made.add()
        guard = Guard("survivor", kind="worker")
        live = Session(guard, replica.url).start()
        try:
            pg.stop()
            time.sleep(2)  # shorter than the lease: the agent keeps working
            assert not guard.frozen
            pg.start()
            pg.wait_ready()
            with made.api(replica) as api:
                wait_for(lambda: api.get("/api/status").status_code == 200, timeout=30)  # reconnected by itself
                kill(api, "agent:survivor")
                wait_for(lambda: guard.level == 3, timeout=10)
                api.post("/api/restore", json={"scope": "global", "by": "ops@example.com", "reason": "back"})
                wait_for(lambda: guard.level == 0, timeout=10)
            pg.stop()  # now longer than the lease: the agent freezes (fail closed) ...
            wait_for(lambda: guard.lease_lost, timeout=20)
            assert guard.frozen
            pg.start()
            pg.wait_ready()
            wait_for(lambda: not guard.lease_lost, timeout=30)  # ... and recovers when it is back
            assert not guard.frozen
            with made.api(replica) as api:
                assert api.get("/api/audit/verify").json()["valid"]
        finally:
            live.close()
            made.stop()
    finally:
        pg.remove()


def test_an_slo_breach_is_audited_once_across_replicas(tmp_path: Path) -> None:
    """Every replica judges executions against the time-to-halt SLO; a breach is audited once."""
    with fresh_database() as dsn:
        made = Cluster(tmp_path, dsn, "--halt-slo", "0.2")
        try:
            for _ in range(3):
                made.add()
            ControlLink(made.replicas[0].url).register("never-acks", "worker")  # registered, then mute
            with made.api(made.replicas[1]) as api:
                kill(api, "agent:never-acks")

                def breaches() -> int:
                    entries = api.get("/api/audit", params={"limit": 1000}).json()
                    return sum(e["kind"] == "execution.slo_breach" for e in entries)

                wait_for(lambda: breaches() >= 1, timeout=20)
                time.sleep(3)  # several upkeep rounds on every replica
                assert breaches() == 1
        finally:
            made.stop()


def test_replicas_judging_the_slo_at_the_same_moment_audit_a_breach_once(tmp_path: Path) -> None:
    """The race itself: several control planes on one database judge the same breached execution at
    the same moment; exactly one audits it."""
    from m99.control import ControlPlane, Settings
    from m99.levels import Level, Scope
    from m99.store import open_store

    with fresh_database() as dsn:
        key = tmp_path / "server.key"
        SigningKey.generate().save(key)
        planes = [
            ControlPlane(open_store(dsn), tmp_path / f"r{i}", Settings(halt_slo=0.05), key_file=key) for i in range(6)
        ]
        try:
            first = planes[0]
            first.register(ControlLink("http://127.0.0.1:9").registration_body("mute-agent", "worker"))
            with first.ledger.unit() as unit:
                first.executions.fire(
                    unit,
                    origin="execute",
                    level=Level(3),
                    scope=Scope.parse("agent:mute-agent"),
                    by="ops@example.com",
                    reason="never acknowledged",
                    actor={"kind": "test"},
                    token_name="test",
                    auth_id=None,
                )
            time.sleep(0.2)  # past the SLO: the agent never acknowledged
            barrier = threading.Barrier(len(planes))
            found: list[list[str]] = []

            def judge(plane: ControlPlane) -> None:
                barrier.wait()
                found.append(plane.executions.check_slo())

            threads = [threading.Thread(target=judge, args=(p,)) for p in planes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert sorted(len(f) for f in found) == [0] * (len(planes) - 1) + [1], found
        finally:
            for plane in planes:
                plane.close()
