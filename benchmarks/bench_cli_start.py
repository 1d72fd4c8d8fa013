"""How fast the operator's command starts: from the keystroke (the process is spawned) to the request on
the wire, for ``m99 execute --auth ID --force`` and ``m99 status``.

    python benchmarks/bench_cli_start.py [--runs 20]

A listener on a free loopback port notes when the first bytes of each request arrive and answers like
the control plane would; the command runs as an operator runs it (the ``m99`` console script of this
environment), so the figure is interpreter start-up + imports + building the request.  Target: <= 100 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

TARGET_MS = 100.0
ANSWERS = {
    b"/api/execute": b'{"success":true,"agents_terminated":0,"execution_id":"exe_0","authorization_id":"auth_0",'
    b'"level":3,"scope":"global","levels_fired":["L1","L2","L3"],"agents":[],"directive_id":"dir_0","version":1,'
    b'"committed_ms":0.1}',
    b"/api/status": b'{"status":"idle","version":0,"agents_total":0,"agents_held":0,"agents_stopped":0,"armed":[],'
    b'"audit_head":{"seq":0,"hash":"0"},"settings":{},"agents":[],"directives":[]}',
}


class Listener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            data = conn.recv(65536)
            self.arrivals.append(time.perf_counter())
            path = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b"/"
            body = next((v for k, v in ANSWERS.items() if path.startswith(k)), b"{}")
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            conn.sendall(head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            conn.close()


def measure(command: list[str], listener: Listener, runs: int) -> list[float]:
    env = {**os.environ, "M99_URL": f"http://127.0.0.1:{listener.port}", "M99_TOKEN": "m99_benchmark"}
    times = []
    for _ in range(runs):
        before = len(listener.arrivals)
        started = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=30)
        if len(listener.arrivals) == before:
            raise SystemExit(f"{' '.join(command)} sent no request")
        times.append((listener.arrivals[before] - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    m99 = shutil.which("m99", path=os.path.dirname(sys.executable)) or shutil.which("m99")
    base = [m99] if m99 else [sys.executable, "-m", "m99.cli"]
    listener = Listener()
    bare = measure(
        [
            sys.executable,
            "-c",
            "import socket,os; port = int(os.environ['M99_URL'].rsplit(':',1)[1]);"
            " s=socket.create_connection(('127.0.0.1', port)); s.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n'); s.recv(100)",
        ],
        listener,
        args.runs,
    )
    print(f"interpreter start-up + one socket request (the floor): median {statistics.median(bare):.1f} ms")
    ok = True
    for label, extra in (
        ("m99 execute --auth ID --force", ["execute", "--auth", "auth_0", "--force"]),
        ("m99 status", ["status"]),
    ):
        times = sorted(measure(base + extra, listener, args.runs))
        p90 = times[int(len(times) * 0.9) - 1]
        ok &= statistics.median(times) <= TARGET_MS
        print(
            f"{label:<32} keystroke to request on the wire: median {statistics.median(times):.1f} ms, "
            f"p90 {p90:.1f} ms, best {times[0]:.1f} ms over {args.runs} runs (target <= {TARGET_MS:.0f} ms)"
        )
    print("target met" if ok else "target NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
