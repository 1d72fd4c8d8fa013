"""Case packs and evidence at fleet size.

    python benchmarks/bench_casepack.py [--agents 1000] [--rounds 2]

One process holds ``--agents`` Guards, each with its own session (registration, push stream, signed
acknowledgements with receipts) to a ``m99 serve`` subprocess on a temporary SQLite database.  Each
round fires L3 on all of them and takes the slowest confirmed time-to-halt the control plane measured,
once with the agents' evidence upload switched off and once with it on (the freeze never waits for it:
the difference is the figure).  Then the case pack of the last execution (every receipt and every
agent's evidence) is fetched and ``m99.evidence.casepack.verify`` is timed on it (target: <= 2 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from m99.crypto import SigningKey
from m99.evidence import upload
from m99.evidence.casepack import verify
from m99.guard import Guard
from m99.server import free_port
from m99.session import Session

SERVE = [sys.executable, "-m", "m99.cli", "serve"]


def wait(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)


def halt_once(admin: httpx.Client, agents: int, guards: list[Guard]) -> tuple[str, float]:
    auth = admin.post("/api/arm", json={"by": "bench@example.com", "reason": "bench", "level": 3}).json()
    result = admin.post("/api/execute", json={"authorization_id": auth["id"]}).json()
    execution_id = result["execution_id"]
    wait(lambda: admin.get(f"/api/executions/{execution_id}").json()["time_to_halt"]["confirmed"] == agents, 120)
    halt = admin.get(f"/api/executions/{execution_id}").json()["time_to_halt"]
    admin.post("/api/restore", json={"scope": "global", "by": "bench@example.com", "reason": "round done"})
    wait(lambda: all(not g.frozen for g in guards), 60)
    return execution_id, float(halt["max_ms"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--save", default=None, help="Also write the case pack to this file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                *SERVE,
                "--port",
                str(port),
                "--register-rate",
                "0",
                "--heartbeat-interval",
                "300",
                "--log-level",
                "error",
            ],
            env={**os.environ, "M99_DATA_DIR": str(Path(tmp) / "server")},
        )
        try:
            return run(args, tmp, url)
        finally:
            server.terminate()
            server.wait(30)


def run(args: argparse.Namespace, tmp: str, url: str) -> int:
    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait(up, 30)
    token = (Path(tmp) / "server" / "admin.token").read_text().strip()
    server_key = SigningKey.load(Path(tmp) / "server" / "server.key").public_b64
    if True:
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        print(f"starting {args.agents} Guards with sessions…", flush=True)
        guards = [Guard(f"bench-{i:04d}", kind="bench", framework="custom") for i in range(args.agents)]
        for g in guards:
            g.protect_secret(f"sk-bench-{g.name}-secret", label="key")
            h = g.effects.started("lookup", {"query": "q"})
            g.record_tool_call("lookup", handle=h, result="x" * 100)
        sessions = [Session(g, url, key_file=Path(tmp) / "keys" / g.name).start() for g in guards]
        time.sleep(2.0)  # every push stream open
        real_add = upload.uploads.add
        figures: dict[str, list[float]] = {"off": [], "on": []}
        last = ""
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                upload.uploads.add = real_add if mode == "on" else (lambda *a, **k: None)  # type: ignore[method-assign]
                last_id, ms = halt_once(admin, args.agents, guards)
                figures[mode].append(ms)
                if mode == "on":
                    last = last_id
                print(f"  evidence upload {mode:>3}: slowest confirmed time-to-halt {ms:8.1f} ms", flush=True)
        upload.uploads.add = real_add  # type: ignore[method-assign]
        wait(lambda: len(admin.get(f"/api/executions/{last}/evidence").json()) == args.agents + 1, 120)
        pack = admin.get(f"/api/executions/{last}/casepack").content
        if args.save:
            Path(args.save).write_bytes(pack)
        for s in sessions:  # the verifier runs alone, as it would on an auditor's machine
            s.close(deregister=False)
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            report = verify(pack, public_key=server_key)
            timings.append(time.perf_counter() - start)
        assert len(report.confirmed) == args.agents and len(report.evidence) == args.agents
        off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
        print(
            f"\n{args.agents} agents, {args.rounds} round(s) each, slowest confirmed time-to-halt (median of rounds):"
        )
        print(f"  evidence upload off  {off:8.1f} ms")
        print(f"  evidence upload on   {on:8.1f} ms   (difference {on - off:+.1f} ms)")
        print(
            f"case pack of {args.agents} agents (receipts + evidence): {len(pack) / 1e6:.2f} MB, "
            f"m99 casepack verify {min(timings):.3f} s (best of 3; target <= 2 s)"
        )
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
