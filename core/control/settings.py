"""The control plane's settings (``m99 serve`` options), with their defaults."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENROL_MODES", "Settings"]

ENROL_MODES = ("open", "token")


@dataclass(frozen=True)
class Settings:
    heartbeat_interval: float = 30.0
    missed_heartbeats: int = 3
    deadman_level: int = 3
    clock_skew: float = 60.0
    lease_seconds: float = 0.0  # 0: derived from the heartbeat interval
    max_window: float = 3600.0
    # open: any process may register a new name (a bound name still needs its key); token: every
    # registration presents an enrolment token (``m99 token create --role agent``).
    enrol: str = "open"
    register_rate: float = 50.0  # registrations per second per source (0: unlimited)
    register_burst: float = 500.0
    refusal_window: float = 10.0  # seconds over which repeated refusals fold into one audit entry
    retention: float = 7 * 86400.0  # stopped agents are forgotten after this long (0: never)
    gone_after: float = 0.0  # a silent agent is counted gone (stopped) after this (0: 4 dead man windows)
    halt_slo: float = 5.0  # seconds from execute to a confirmed halt
    canary: float = 0.0  # seconds between pushes to the canary on the server's own push path (0: none)
    two_person: bool = False  # the executing token's identity must differ from the arming one's
    body_timeout: float = 10.0  # seconds a request's declared body may take to arrive
    webhook: str = ""  # where policy notifications are POSTed, signed ("": no sink: logged as not delivered)
    webhook_format: str = "json"  # or "slack": a Slack-compatible {"text": ...} body

    @property
    def lease(self) -> float:
        return self.lease_seconds or self.heartbeat_interval * self.missed_heartbeats

    @property
    def deadman_window(self) -> float:
        return self.heartbeat_interval * self.missed_heartbeats

    @property
    def staleness(self) -> float:
        """Seconds a replica may go without reading its store before it stops answering heartbeats (so
        agents fail over to a replica that can, or freeze at their lease)."""
        return max(3.0, min(self.lease / 3, 15.0))

    @property
    def gone_window(self) -> float:
        return self.gone_after or 4 * self.deadman_window
