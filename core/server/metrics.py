"""``GET /metrics``: the control plane's numbers in the Prometheus text format.

The endpoint is unauthenticated, so it only reads what is already in memory: counters the control plane
bumps as things commit (heartbeats, executions by origin, dead man's switch firings, confirmed halts and
their time-to-halt), the registry's counts and the audit head.  The one figure that needs the store, the
halts not confirmed yet, is recounted off the event loop by a thread of its own — at once when this
replica records an execution or an acknowledgement, and every ``REFRESH`` seconds for the others — and
``/metrics`` serves the last count.  A flood of scrapes therefore costs no store work at all.

Counters are this replica's: with several replicas, sum them (each execution and each acknowledgement is
recorded by exactly one replica).  The unconfirmed-halts gauge reads the shared store, so every replica
reports the same figure: take one, not the sum.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..control.liveness import HALT_ORIGINS

if TYPE_CHECKING:
    from ..control import ControlPlane
    from .stream import PushHub

__all__ = ["BUCKETS", "MIN_GAP", "RECENT", "REFRESH", "Metrics"]

log = logging.getLogger("m99.server")

# Time-to-halt buckets, in seconds: the Guard's push path halts in milliseconds, a heartbeat repair in
# one interval (30 s by default).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RECENT = 50  # the newest executions whose unconfirmed halts are counted
REFRESH = 5.0  # seconds between recounts of the unconfirmed halts when nothing here changed
MIN_GAP = 0.5  # seconds between two recounts at least


class _Histogram:
    """Bucket counts and a sum, per origin; observed under the owner's lock."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class Metrics(Collector):
    """What ``/metrics`` shows for one control plane; ``render()`` is the response body."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, cp: ControlPlane, hub: PushHub, counters: dict[str, int], *, refresh: float = REFRESH) -> None:
        self.cp, self.hub, self.counters = cp, hub, counters
        self.refresh = refresh
        self._lock = threading.Lock()
        self._executions: dict[str, int] = dict.fromkeys(HALT_ORIGINS, 0)
        self._deadman_agents = 0
        self._halts: dict[str, _Histogram] = {}
        self._unconfirmed: dict[str, int] = dict.fromkeys(HALT_ORIGINS, 0)
        self._unconfirmed_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        cp.executions.on_fired.append(self._fired)
        cp.liveness.on_halted.append(self._halted)

    # -- fed by the control plane, after each commit ------------------------------------------------
    def _fired(self, origin: str, agents: int) -> None:
        with self._lock:
            self._executions[origin] = self._executions.get(origin, 0) + 1
            if origin == "deadman":
                self._deadman_agents += agents
        self._wake.set()

    def _halted(self, halts: list[tuple[str, float]]) -> None:
        with self._lock:
            for origin, ms in halts:
                self._halts.setdefault(origin, _Histogram()).observe(ms / 1000)
        self._wake.set()

    # -- the unconfirmed halts, recounted off the event loop -----------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="m99-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # what changes during the count wakes the next one
            try:
                self.recount()
            except Exception as exc:  # the store is away: keep the last count and say so in the log
                log.warning("m99: /metrics could not count the unconfirmed halts: %s", exc)
            # A storm of executions recounts at most every MIN_GAP seconds, not once per execution.
            if self._stop.wait(MIN_GAP):
                return
            self._wake.wait(max(0.0, self.refresh - MIN_GAP))

    def recount(self) -> dict[str, int]:
        """Agents in scope of the ``RECENT`` newest executions whose halt is not confirmed, per origin."""
        counts: dict[str, int] = dict.fromkeys(HALT_ORIGINS, 0)
        with self.cp.store.snapshot() as tx:
            for row in tx.list_executions(RECENT):
                confirmed = {a.agent for a in tx.list_acks(row.id) if row.targets.get(a.agent) == a.agent_id}
                counts[row.origin] = counts.get(row.origin, 0) + len(set(row.agents) - confirmed)
        with self._lock:
            self._unconfirmed, self._unconfirmed_at = counts, time.time()
        return counts

    # -- the exposition -----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        cp, counters = self.cp, self.counters
        counts = cp.counts()
        with self._lock:
            executions = dict(self._executions)
            deadman_agents = self._deadman_agents
            halts = {origin: (h.buckets(), h.sum) for origin, h in self._halts.items()}
            unconfirmed, unconfirmed_at = dict(self._unconfirmed), self._unconfirmed_at

        agents = GaugeMetricFamily("m99_agents", "Agents known to the control plane, by state.", labels=["status"])
        for status, n in sorted(counts["agents"].items()):
            agents.add_metric([status], n)
        yield agents
        yield GaugeMetricFamily("m99_agents_held", "Running agents under a level above 0.", value=counts["held"])
        yield GaugeMetricFamily("m99_state_version", "The signed state's version.", value=counts["version"])
        yield GaugeMetricFamily("m99_active_directives", "Directives in force.", value=counts["directives"])
        for name, text in (
            ("heartbeats", "Signed heartbeats accepted by this replica."),
            ("heartbeats_rejected", "Heartbeats refused by this replica (forged, replayed, stale, malformed)."),
            ("requests_refused", "Requests refused with a 4xx by this replica."),
            ("acks", "Acknowledgements accepted by this replica."),
            ("ack_requests", "Acknowledgement requests (one may carry many agents' acks)."),
        ):
            yield CounterMetricFamily(f"m99_{name}", text, value=counters[name])
        yield CounterMetricFamily("m99_refusals", "Refusals noted for the audit chain.", value=cp.refusals.total)
        fired = CounterMetricFamily("m99_executions", "Executions fired by this replica, by origin.", labels=["origin"])
        for origin, n in sorted(executions.items()):
            fired.add_metric([origin], n)
        yield fired
        yield CounterMetricFamily(
            "m99_deadman_firings", "Dead man's switch firings by this replica.", value=executions.get("deadman", 0)
        )
        yield CounterMetricFamily(
            "m99_deadman_agents", "Silent agents the dead man's switch stopped on this replica.", value=deadman_agents
        )
        histogram = HistogramMetricFamily(
            "m99_time_to_halt_seconds",
            "Confirmed halts recorded by this replica: execution to the agent's signed acknowledgement.",
            labels=["origin"],
        )
        for origin, (buckets, total) in sorted(halts.items()):
            histogram.add_metric([origin], buckets, total)
        yield histogram
        pending = GaugeMetricFamily(
            "m99_halts_unconfirmed",
            f"Agents in scope of the {RECENT} newest executions whose halt is not confirmed, by origin.",
            labels=["origin"],
        )
        for origin, n in sorted(unconfirmed.items()):
            pending.add_metric([origin], n)
        yield pending
        yield GaugeMetricFamily(
            "m99_halts_unconfirmed_counted_at",
            "When the unconfirmed halts were last counted (Unix time; 0: not yet).",
            value=unconfirmed_at,
        )
        yield GaugeMetricFamily("m99_push_connections", "Open agent push streams.", value=self.hub.connections)
        seq = cp.ledger.head[0]
        yield GaugeMetricFamily("m99_audit_entries", "Entries in the audit chain.", value=seq + 1)
        yield GaugeMetricFamily("m99_audit_head_seq", "Sequence number of the newest audit entry.", value=seq)
        yield GaugeMetricFamily(
            "m99_uptime_seconds", "Seconds since this control plane started.", value=time.time() - cp.started_at
        )
        canary = cp.canary.status() if cp.canary is not None else None  # m99 serve --canary SECONDS
        if canary is not None:
            yield GaugeMetricFamily(
                "m99_canary_ok", "1 while the canary's last push arrived in time.", value=canary["ok"]
            )
            yield CounterMetricFamily("m99_canary_pushes", "Pushes to the canary.", value=canary["pushes"])
            yield CounterMetricFamily(
                "m99_canary_failures", "Canary pushes not received in time.", value=canary["failures"]
            )
            last = canary["last_push_ms"]
            yield GaugeMetricFamily(
                "m99_canary_last_push_ms",
                "The last canary push's delivery time.",
                value=math.nan if last is None else last,
            )

    def render(self) -> bytes:
        return generate_latest(self.registry)
