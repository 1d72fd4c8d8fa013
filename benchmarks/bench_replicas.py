"""One SQLite server beside two PostgreSQL replicas, in one run:

(a) time-to-halt for N Guards (one Session and push stream each, in client processes): on one `m99 serve`
    on SQLite, then on two replicas sharing one PostgreSQL with half the Guards connected to each and the
    execute sent to the first (the other half learn of it through the database's notification);
(b) signed heartbeats per second on one replica, then spread over two;
(c) audit appends per second with operators writing on both replicas at once, and the chain verified.

    python benchmarks/bench_replicas.py [--agents 1000] [--procs 4] [--rounds 3] [--dsn postgresql://…]

The PostgreSQL server is ``--dsn`` (default ``$M99_TEST_POSTGRES_DSN``, else the local one); each part
runs on a new database made there and dropped afterwards.  Targets: replicas' time-to-halt <= 1.5x the
single server's, two replicas' heartbeats/s >= 1.6x one's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_control_plane import blast, register_agents, signed_heartbeat
from bench_guard import Worker, die_with_parent, end_progress, fmt_ms, halt_round, percentile, progress, raise_fd_limit

from m99.client import OperatorClient
from m99.crypto import SigningKey
from m99.server import free_port

TARGET_HALT_RATIO = 1.5
TARGET_HEARTBEAT_RATIO = 1.6


class Replica:
    def __init__(self, data_dir: Path, store: str | None, key_file: Path | None, *extra: str) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--port", str(self.port), *extra]
        if store:
            args += ["--store", store, "--key-file", str(key_file)]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m99.cli", "serve", *args],
            env={**os.environ, "M99_DATA_DIR": str(data_dir)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise SystemExit("m99 serve did not start:\n" + (data_dir / "serve.log").read_text())

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Deployment:
    """One SQLite server, or replicas on one PostgreSQL database; what bench_guard's rounds need of it."""

    def __init__(self, tmp: Path, count: int, dsn: str | None, *extra: str) -> None:
        key = tmp / "server.key"
        SigningKey.generate().save(key)
        self.replicas = [Replica(tmp / f"replica-{i}", dsn, key, *extra) for i in range(count)]
        self.url = self.replicas[0].url
        self.data_dir = tmp

    @property
    def token(self) -> str:
        for r in self.replicas:
            path = r.data_dir / "admin.token"
            if path.exists():
                return path.read_text().strip()
        raise SystemExit("no admin token")

    def metric(self, name: str) -> float:
        return sum(r.metric(name) for r in self.replicas)

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()


@contextlib.contextmanager
def database(dsn: str) -> Iterator[str]:
    import psycopg

    name = f"m99_bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_fleet(deployment: Deployment, agents: int, procs: int) -> list[Worker]:
    """Workers spread over the replicas round-robin: each replica holds an equal share of push streams."""
    shares = [agents // procs + (1 if i < agents % procs else 0) for i in range(procs)]
    urls = [r.url for r in deployment.replicas]
    workers = [Worker(i, urls[i % len(urls)], n, deployment.data_dir) for i, n in enumerate(shares) if n]
    started = time.monotonic()
    for w in workers:
        w.expect("ready", 60 + agents * 0.2)
        progress(f"  registered {sum(x.count for x in workers[: workers.index(w) + 1]):,} of {agents:,}")
    while deployment.metric("m99_push_connections") < agents:
        if time.monotonic() - started > 120 + agents * 0.2:
            raise SystemExit("push streams did not all open")
        time.sleep(0.25)
    end_progress()
    return workers


def halt(deployment: Deployment, agents: int, procs: int, rounds: int) -> list[dict[str, Any]]:
    workers: list[Worker] = []
    op = OperatorClient(deployment.url, deployment.token, timeout=60)
    try:
        workers = start_fleet(deployment, agents, procs)
        return [halt_round(deployment, workers, op, agents, 30.0) for _ in range(rounds)]  # type: ignore[arg-type]
    finally:
        for w in workers:
            w.stop()
        op.close()


def heartbeat_rate(deployment: Deployment, agents: int, total: int, conns: int) -> float:
    """Signed heartbeats per second, each agent's on one connection to the replica it registered on."""
    per = [
        register_agents(r.url, agents // len(deployment.replicas), f"hb{i}") for i, r in enumerate(deployment.replicas)
    ]
    rounds = max(1, total // agents)

    async def run() -> float:
        jobs = []
        for replica, registered in zip(deployment.replicas, per, strict=True):
            batches: list[list[bytes]] = [[] for _ in range(conns // len(per))]
            for r in range(rounds):
                for i, (agent_id, key) in enumerate(registered):
                    batches[i % len(batches)].append(signed_heartbeat(agent_id, key, r + 1))
            jobs.append(blast(replica.port, batches))
        started = time.perf_counter()
        outcomes = await asyncio.gather(*jobs)
        elapsed = time.perf_counter() - started
        if any(failures for _, failures, _ in outcomes):
            raise SystemExit(f"heartbeats refused: {[f for _, f, _ in outcomes]}")
        return sum(len(lat) for lat, _, _ in outcomes) / elapsed

    return asyncio.run(run())


def audit_rate(deployment: Deployment, writers_per_replica: int, each: int) -> tuple[float, bool]:
    register_agents(deployment.url, 1, "audited")
    token = deployment.token

    def write(url: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
            for i in range(each):
                api.post(
                    "/api/arm", json={"by": "bench@example.com", "reason": f"r{i}", "scope": "agent:audited-00000"}
                )

    threads = [
        threading.Thread(target=write, args=(r.url,)) for r in deployment.replicas for _ in range(writers_per_replica)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    with httpx.Client(base_url=deployment.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as api:
        valid = bool(api.get("/api/audit/verify").json()["valid"])
    return len(threads) * each / elapsed, valid


def summary(label: str, results: list[dict[str, Any]]) -> tuple[float, float]:
    p50 = percentile(sorted(r["p50"] for r in results), 50)
    worst = max(r["max"] for r in results)
    halted = min(r["halted"] for r in results)
    print(f"    {label:<38} p50 {fmt_ms(p50):>7} ms, max {fmt_ms(worst):>7} ms, halted {halted:,} (worst round)")
    return p50, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--heartbeats", type=int, default=20000)
    parser.add_argument(
        "--dsn", default=os.environ.get("M99_TEST_POSTGRES_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    raise_fd_limit(3 * args.agents + 1024)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="m99-bench-") as tmp:
        print(f"(a) time-to-halt, {args.agents:,} Guards in {args.procs} processes, {args.rounds} rounds:")
        single = Deployment(Path(tmp, "sqlite"), 1, None)
        try:
            results["single"] = summary("one server, SQLite", halt(single, args.agents, args.procs, args.rounds))
        finally:
            single.stop()
        with database(args.dsn) as dsn:
            pair = Deployment(Path(tmp, "pg"), 2, dsn)
            try:
                results["pair"] = summary(
                    "two replicas, PostgreSQL (half on each)", halt(pair, args.agents, args.procs, args.rounds)
                )
            finally:
                pair.stop()
        ratio = results["pair"][1] / results["single"][1]
        met = "met" if ratio <= TARGET_HALT_RATIO else "NOT met"
        print(f"    replicas / single, max time-to-halt: {ratio:.2f}x (target <= {TARGET_HALT_RATIO}x: {met})")

        print(f"(b) signed heartbeats per second, {args.heartbeats:,} over 32 connections:")
        rates = []
        for count in (1, 2):
            with database(args.dsn) as dsn:
                deployment = Deployment(
                    Path(tmp, f"hb{count}"), count, dsn, "--heartbeat-interval", "3600", "--register-rate", "0"
                )
                try:
                    rates.append(heartbeat_rate(deployment, 1000, args.heartbeats, 32))
                finally:
                    deployment.stop()
            print(f"    {count} replica{'s' if count > 1 else ''}: {rates[-1]:,.0f}/s")
        hb_ratio = rates[1] / rates[0]
        met = "met" if hb_ratio >= TARGET_HEARTBEAT_RATIO else "NOT met"
        print(f"    two / one: {hb_ratio:.2f}x (target >= {TARGET_HEARTBEAT_RATIO}x: {met})")

        print("(c) audit appends with operators on both replicas at once (4 writers each):")
        with database(args.dsn) as dsn:
            deployment = Deployment(Path(tmp, "audit"), 2, dsn, "--register-rate", "0")
            try:
                rate, valid = audit_rate(deployment, 4, 100)
            finally:
                deployment.stop()
        print(f"    {rate:,.0f} appends/s (one audited act each), chain {'valid' if valid else 'INVALID'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
