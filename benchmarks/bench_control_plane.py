"""Control-plane benchmarks: signed heartbeats ingested per second by one `m99 serve`
process (with p50/p99 latency), and `execute` latency with 1,000 agents in scope.

    python benchmarks/bench_control_plane.py [--agents 1000] [--heartbeats 20000] [--connections 32]

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
import time
from pathlib import Path

import httpx

from m99.crypto import SigningKey, canonical_json
from m99.server import free_port


def start_server(data_dir: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "M99_DATA_DIR": data_dir}
    proc = subprocess.Popen(
        [sys.executable, "-m", "m99.cli", "serve", "--port", str(port), "--heartbeat-interval", "3600"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start: " + (proc.stderr.read().decode() if proc.stderr else ""))


def register_agents(url: str, count: int) -> list[tuple[str, SigningKey]]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(count):
            key = SigningKey.generate()
            body = {
                "name": f"bench-{i:05d}",
                "kind": "worker" if i % 2 else "researcher",
                "framework": "none",
                "pid": 1,
                "host": "bench",
                "public_key": key.public_b64,
            }
            answer = http.post("/api/agents/register", json=body).json()
            out.append((answer["agent_id"], key))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--heartbeats", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--execute-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="m99-bench-") as data_dir:
        port = free_port()
        server = start_server(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            print(f"registering {args.agents} agents…", flush=True)
            agents = register_agents(url, args.agents)
            bench_heartbeats(url, port, agents, args.heartbeats, args.connections)
            token = (Path(data_dir) / "admin.token").read_text().strip()
            bench_execute(url, token, args.execute_runs)
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
