"""The control plane's own threads: the group commit of heartbeats, the dead man's switch, and upkeep.

Each runs in a thread of its own, off the event loop that serves agents, and each round is isolated:
a failing heartbeat flush (a database hiccup) cannot skip a dead man's switch check, and neither can
stop the other thread's next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .liveness import FLUSH_PERIOD

if TYPE_CHECKING:
    from . import ControlPlane

__all__ = ["Background"]

log = logging.getLogger("m99.control")

UPKEEP_PERIOD = 1.0
PRUNE_PERIOD = 60.0


class Background:
    def __init__(self, cp: ControlPlane, *, deadman_period: float | None = None) -> None:
        self.cp = cp
        interval = cp.settings.heartbeat_interval
        self.deadman_period = deadman_period or max(0.05, min(1.0, interval / 4))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_prune = 0.0

    def start(self) -> None:
        for name, period, rounds in (
            ("flush", FLUSH_PERIOD, (self.cp.liveness.flush, self.cp.refusals.flush)),
            # Catch up first: a replica that just got its store back must know it before judging silence.
            ("deadman", self.deadman_period, (self.cp.state.sync, self.cp.deadman.check)),
            ("upkeep", UPKEEP_PERIOD, (self.cp.state.sync, self.cp.liveness.refresh, self._upkeep)),
        ):
            thread = threading.Thread(target=self._run, args=(name, period, rounds), name=f"m99-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, name: str, period: float, rounds: tuple[Callable[[], object], ...]) -> None:
        while not self._stop.wait(period):
            for step in rounds:
                try:
                    step()
                except Exception:  # keep going: one failed round must not disable the others
                    log.exception("m99: %s round (%s) failed", name, getattr(step, "__name__", step))

    def _upkeep(self) -> None:
        cp = self.cp
        cp.authorizations.expire_due()
        cp.executions.check_slo()
        cp.deadman.gone()
        now = time.monotonic()
        if now - self._last_prune >= PRUNE_PERIOD:
            self._last_prune = now
            cp.deadman.prune()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        try:  # what the last round had not written yet
            self.cp.liveness.flush()
            self.cp.refusals.flush()
        except Exception:
            log.exception("m99: final flush failed")
