"""How fast is offline audit verification?  Builds a realistic chain in a temporary SQLite file and
times ``verify_sqlite`` end to end (open, read, verify), best of three.

    python benchmarks/bench_audit.py [--entries N] [--checkpoint-every K]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from m99.audit import (
    GENESIS_PREV,
    HEAD_FILE_NAME,
    Checkpoint,
    make_entry,
    sign_checkpoint,
    write_head_file,
)
from m99.crypto import SigningKey, fingerprint
from m99.store.sqlite import verify_sqlite

TARGET = 500_000  # entries per second, on a 2-core machine

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE audit_entries (
    seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL, signature TEXT NOT NULL
);
"""

KINDS = ("authorization.armed", "authorization.executed", "heartbeat.anomaly", "tool.refused", "level.restored")
OPERATORS = ("alice", "bob", "carol", "dmitri")
REASONS = ("cost runaway above budget", "wrote outside its sandbox", "replayed heartbeat", "quarterly drill")


def build_chain(db_path: Path, entries: int, checkpoint_every: int) -> tuple[str, int, float]:
    """Write ``entries`` chained entries and a checkpoint per batch; return (public key, checkpoints, avg body)."""
    key = SigningKey.generate()
    tokens = [fingerprint(f"m99_tok_{name}") for name in OPERATORS]
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta (key, value) VALUES ('server_public_key', ?)", (key.public_b64,))
    prev, body_bytes = GENESIS_PREV, 0
    batch: list[tuple[int, str, str, bytes, str]] = []
    cps: list[Checkpoint] = []
    actor: dict[str, Any]
    data: dict[str, Any]
    base = time.time()
    for seq in range(entries):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + seq)) + f".{seq % 1_000_000:06d}Z"
        if seq == 0:
            kind, actor, data = "genesis", {"by": "server"}, {"version": "0.1.0"}
        else:
            op = seq % len(OPERATORS)
            kind = KINDS[seq % len(KINDS)]
            actor = {"by": f"operator:{OPERATORS[op]}", "token": tokens[op], "role": "admin"}
            data = {"scope": f"agent:research-{seq % 97}", "level": 1 + seq % 6, "reason": REASONS[seq % 4]}
        body, prev = make_entry(prev, seq, ts, kind, actor, data)
        body_bytes += len(body)
        batch.append((seq, ts, kind, body, prev))
        if len(batch) == checkpoint_every or seq == entries - 1:
            # What the server does per committed batch: entries, then a signed checkpoint of the head.
            conn.executemany("INSERT INTO audit_entries VALUES (?, ?, ?, ?, ?)", batch)
            cp = sign_checkpoint(key, seq, prev, ts)
            conn.execute("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?)", (cp.seq, cp.hash, cp.ts, cp.signature))
            conn.commit()
            cps.append(cp)
            batch = []
    conn.close()
    write_head_file(db_path.parent / HEAD_FILE_NAME, cps[-1], key.public_b64)
    return key.public_b64, len(cps), body_bytes / max(entries, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--checkpoint-every", type=int, default=1_000, help="entries per committed batch")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="m99-bench-audit-") as tmp:
        db_path = Path(tmp) / "m99.db"
        started = time.perf_counter()
        public_key, n_cps, avg_body = build_chain(db_path, args.entries, args.checkpoint_every)
        print(
            f"built {args.entries} entries (avg body {avg_body:.0f} bytes, {n_cps} signed checkpoints) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        times, cpu_times = [], []
        for _ in range(args.runs):
            started, cpu_started = time.perf_counter(), time.process_time()
            result = verify_sqlite(db_path, public_key_b64=public_key)
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
            if not result.valid or result.entries != args.entries:
                print(f"audit verify FAILED on an untouched chain: {result.to_dict()}", file=sys.stderr)
                return 1
    best = min(times)
    rate = args.entries / best
    verdict = "" if rate >= TARGET else "  BELOW TARGET"
    print(
        f"audit verify: {args.entries} entries in {best:.2f} s = {rate:,.0f} entries/s "
        f"(best of {args.runs}; target >= {TARGET:,}){verdict}"
    )
    # Wall time is what counts, but on a shared machine the CPU time and load say how much was contention.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"  cpu time {min(cpu_times):.2f} s (best of {args.runs}); load average {load} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
