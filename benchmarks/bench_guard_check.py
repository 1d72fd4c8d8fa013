"""What a Guard check adds to an allowed tool call: ns/op against a bare function call.

Run ``python benchmarks/bench_guard_check.py [iterations]``.  ``measure`` is importable so that other
columns (e.g. an HTTP status poll per call) can be measured the same way and printed beside these.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable

from m99.guard import Guard

TARGET_ADDED_NS = 150.0
ITERATIONS = 1_000_000
REPEATS = 5


def measure(fn: Callable[[], object], n: int = ITERATIONS, repeats: int = REPEATS) -> float:
    """Best-of-``repeats`` nanoseconds per call of ``fn`` over ``n`` calls."""
    best = min(timeit.Timer(fn).repeat(repeat=repeats, number=n))
    return best / n * 1e9


def bare(tool: str) -> None:
    return None


def rows(n: int = ITERATIONS, repeats: int = REPEATS) -> list[tuple[str, float]]:
    """(label, ns/op) for the baseline and each Guard check on its allowed path."""
    guard = Guard("bench-agent", read_only_tools={"search"})
    # Each lambda has the same shape (one closure/global load, one call) so that the lambda's own cost
    # cancels out in the difference.
    calls: list[tuple[str, Callable[[], object]]] = [
        ("bare function call", lambda: bare("search")),
        ('guard.check_tool("search")', lambda: guard.check_tool("search")),
        ("guard.check_model()", lambda: guard.check_model()),
        ("guard.check_status()", lambda: guard.check_status()),
    ]
    # Interleaved rounds, best of each: a burst of load on a shared machine then hits every row alike.
    best = [float("inf")] * len(calls)
    for _ in range(repeats):
        for i, (_, fn) in enumerate(calls):
            best[i] = min(best[i], measure(fn, n, repeats=1))
    return [(label, ns) for (label, _), ns in zip(calls, best, strict=True)]


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else ITERATIONS
    results = rows(n)
    baseline = results[0][1]
    print(f"Python {sys.version.split()[0]}, {n:,} iterations, best of {REPEATS}")
    print(f"{'call':<30} {'ns/op':>8} {'added ns':>9}")
    for label, ns in results:
        added = "" if label == results[0][0] else f"{ns - baseline:9.1f}"
        print(f"{label:<30} {ns:8.1f} {added:>9}")
    added_tool = results[1][1] - baseline
    verdict = "OK" if added_tool <= TARGET_ADDED_NS else "OVER TARGET"
    target = f"check_tool adds <= {TARGET_ADDED_NS:.0f} ns per allowed call"
    print(f"target: {target} -> {added_tool:.1f} ns, {verdict}")
    return 0 if added_tool <= TARGET_ADDED_NS else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
