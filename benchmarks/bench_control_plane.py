"""Control-plane benchmarks against one `m99 serve` process:

- signed heartbeats ingested per second (with p50/p99 latency);
- `execute` latency with 1,000 agents in scope;
- `GET /api/status` and heartbeat p99 with 5,000 agents under 5,000 directives while heartbeats keep
  flowing, then the same during an unauthenticated registration flood (``--status``).

    python benchmarks/bench_control_plane.py [--agents 1000] [--heartbeats 20000] [--connections 32]
    python benchmarks/bench_control_plane.py --status [--agents 5000] [--flood 3000]

The server is a real `m99 serve` subprocess on a free loopback port and a temporary data
directory; the load comes from this process over keep-alive HTTP/1.1 connections, with every
heartbeat signed before the clock starts so that the figures are the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from m99.crypto import SigningKey, canonical_json
from m99.link import ControlLink
from m99.server import free_port


def start_server(data_dir: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "M99_DATA_DIR": data_dir}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "m99.cli",
            "serve",
            "--port",
            str(port),
            "--heartbeat-interval",
            "3600",
            "--register-rate",
            "0",  # the worst case: nothing throttles the flood below
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        # A file, not a pipe nobody reads: the server logs a line per kill, and a full pipe would block it.
        stderr=open(os.path.join(data_dir, "serve.log"), "wb"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start: " + Path(data_dir, "serve.log").read_text())


def register_agents(url: str, count: int, prefix: str = "bench") -> list[tuple[str, SigningKey]]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(count):
            link = ControlLink(url)
            body = link.registration_body(f"{prefix}-{i:05d}", "worker" if i % 2 else "researcher")
            answer = http.post("/api/agents/register", json=body).json()
            out.append((answer["agent_id"], link.key))
    return out


def signed_heartbeat(agent_id: str, key: SigningKey, seq: int) -> bytes:
    body = {"seq": seq, "ts": time.time()}
    body["signature"] = key.sign(canonical_json({"type": "heartbeat", "agent_id": agent_id, **body}))
    payload = json.dumps(body).encode()
    return (
        f"POST /api/agents/{agent_id}/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def blast(port: int, requests_per_conn: list[list[bytes]]) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    failures = 0

    async def worker(batch: list[bytes]) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for raw in batch:
            t0 = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(b) for b in requests_per_conn))
    return latencies, failures, time.perf_counter() - start


def bench_heartbeats(url: str, port: int, agents: list[tuple[str, SigningKey]], total: int, conns: int) -> None:
    per_agent = max(1, total // len(agents))
    batches: list[list[bytes]] = [[] for _ in range(conns)]
    # Each agent stays on one connection so its sequence numbers arrive in order.
    for round_ in range(per_agent):
        for i, (agent_id, key) in enumerate(agents):
            batches[i % conns].append(signed_heartbeat(agent_id, key, round_ + 1))
    sent = sum(len(b) for b in batches)
    latencies, failures, elapsed = asyncio.run(blast(port, batches))
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    rate = sent / elapsed
    print(
        f"heartbeats: {sent} signed heartbeats over {conns} connections from {len(agents)} agents in "
        f"{elapsed:.2f} s = {rate:,.0f}/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, rejected {failures} "
        f"(target >= 2,500/s, p99 <= 50 ms: {'met' if rate >= 2500 and p99 <= 50 and not failures else 'NOT met'})"
    )


def bench_execute(url: str, token: str, runs: int) -> None:
    times = []
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        in_scope = 0
        for i in range(runs):
            auth = http.post(
                "/api/arm",
                json={"by": "bench@example.com", "reason": f"benchmark {i}", "level": 3, "scope": "global"},
            ).json()
            t0 = time.perf_counter()
            result = http.post("/api/execute", json={"authorization_id": auth["id"]}).json()
            times.append((time.perf_counter() - t0) * 1000)
            in_scope = result["agents_terminated"]
            http.post("/api/restore", json={"scope": "global", "by": "bench@example.com", "reason": "reset"})
    print(
        f"execute: {in_scope} agents in scope, L1-L3, median {statistics.median(times):.1f} ms, "
        f"max {max(times):.1f} ms over {runs} runs, measured at the client over HTTP "
        f"(target <= 200 ms: {'met' if max(times) <= 200 else 'NOT met'})"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


class HeartbeatLoad:
    """Heartbeats from every agent, paced at ``rate`` per second over ``conns`` connections, on a thread."""

    def __init__(self, port: int, agents: list[tuple[str, SigningKey]], rate: float, conns: int = 8) -> None:
        self.port, self.agents, self.rate, self.conns = port, agents, rate, conns
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> HeartbeatLoad:
        self._thread.start()
        return self

    def take(self) -> list[float]:
        taken, self.latencies = self.latencies, []
        return taken

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        seq = [0] * len(self.agents)

        async def worker(index: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            mine = list(range(index, len(self.agents), self.conns))
            interval = self.conns / self.rate
            n = 0
            while not self._stop.is_set():
                i = mine[n % len(mine)]
                n += 1
                seq[i] += 1
                raw = signed_heartbeat(self.agents[i][0], self.agents[i][1], seq[i])
                t0 = time.perf_counter()
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                took = time.perf_counter() - t0
                self.latencies.append(took)
                if not head.startswith(b"HTTP/1.1 200"):
                    self.failures += 1
                await asyncio.sleep(max(0.0, interval - took))
            writer.close()

        await asyncio.gather(*(worker(i) for i in range(self.conns)))


def kill_each(url: str, token: str, names: list[str]) -> None:
    """One agent-scoped directive per agent (what a dead man's switch storm leaves behind)."""
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        for i, name in enumerate(names):
            auth = http.post("/api/arm", json={"by": "bench@example.com", "reason": "many", "scope": f"agent:{name}"})
            http.post("/api/execute", json={"authorization_id": auth.json()["id"]})
            if i and i % 1000 == 0:
                print(f"  {i} directives…", flush=True)


def poll_status(url: str, token: str, seconds: float) -> tuple[list[float], int]:
    times: list[float] = []
    size = 0
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = http.get("/api/status")
            times.append(time.perf_counter() - t0)
            size = len(r.content)
            time.sleep(0.05)
    return times, size


def bench_status(url: str, port: int, token: str, agents: list[tuple[str, SigningKey]], flood: int) -> None:
    names = [f"bench-{i:05d}" for i in range(len(agents))]
    print(f"filing {len(names)} agent-scoped directives…", flush=True)
    kill_each(url, token, names)
    load = HeartbeatLoad(port, agents, rate=1000).start()
    try:
        time.sleep(1)
        load.take()
        steady, size = poll_status(url, token, 8)
        beats = load.take()
        print(
            f"status, {len(agents)} agents under {len(names)} directives, "
            f"heartbeats flowing ({len(beats) / 8:,.0f}/s): GET /api/status ({size / 1e6:.1f} MB) "
            f"p50 {percentile(steady, 0.5):.1f} ms, p99 {percentile(steady, 0.99):.1f} ms; "
            f"heartbeat p99 {percentile(beats, 0.99):.1f} ms "
            f"(target p99 <= 50 ms: {'met' if percentile(steady, 0.99) <= 50 else 'NOT met'})"
        )
        bodies = [ControlLink(url).registration_body(f"junk-{i:05d}") for i in range(flood)]
        done = threading.Event()
        counts = {"ok": 0, "refused": 0}

        def flooding() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                for body in bodies:
                    if http.post("/api/agents/register", json=body).status_code == 200:
                        counts["ok"] += 1
                    else:
                        counts["refused"] += 1
            done.set()

        flooder = threading.Thread(target=flooding)
        started = time.monotonic()
        flooder.start()
        during: list[float] = []
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
            while not done.is_set():
                t0 = time.perf_counter()
                http.get("/api/status")
                during.append(time.perf_counter() - t0)
                time.sleep(0.05)
        flooder.join()
        took = time.monotonic() - started
        beats = load.take()
        print(
            f"status during a registration flood ({counts['ok']} registered, {counts['refused']} refused, "
            f"{(counts['ok'] + counts['refused']) / took:,.0f}/s): "
            f"GET /api/status p50 {percentile(during, 0.5):.1f} ms, "
            f"p99 {percentile(during, 0.99):.1f} ms; heartbeat p99 {percentile(beats, 0.99):.1f} ms, "
            f"heartbeats refused {load.failures} (target p99 <= 50 ms: "
            f"{'met' if percentile(during, 0.99) <= 50 and not load.failures else 'NOT met'})"
        )
    finally:
        load.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--heartbeats", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--execute-runs", type=int, default=5)
    parser.add_argument("--status", action="store_true", help="the status-under-load benchmark (5,000 agents)")
    parser.add_argument("--flood", type=int, default=3000, help="registrations in the flood (--status)")
    args = parser.parse_args()
    if args.status and args.agents == 1000:
        args.agents = 5000
    with tempfile.TemporaryDirectory(prefix="m99-bench-") as data_dir:
        port = free_port()
        server = start_server(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            print(f"registering {args.agents} agents…", flush=True)
            agents = register_agents(url, args.agents)
            token = (Path(data_dir) / "admin.token").read_text().strip()
            if args.status:
                bench_status(url, port, token, agents, args.flood)
                return
            bench_heartbeats(url, port, agents, args.heartbeats, args.connections)
            bench_execute(url, token, args.execute_runs)
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
