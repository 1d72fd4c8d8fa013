"""The default terminator of L5/L6: SIGTERM to this process, SIGKILL after a grace period."""

from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["terminate_process"]


def terminate_process(grace_seconds: float) -> None:
    """The default L5 terminator: SIGTERM to this process, then SIGKILL after ``grace_seconds``.

    The SIGKILL timer is a daemon thread started *before* SIGTERM, so it fires even when the host
    ignores or mishandles SIGTERM, or hangs joining its own threads during shutdown.
    """
    pid = os.getpid()
    sigkill = getattr(signal, "SIGKILL", None)
    if sigkill is not None:

        def kill_after_grace() -> None:
            time.sleep(max(0.0, grace_seconds))
            os.kill(pid, sigkill)

        threading.Thread(target=kill_after_grace, name="m99-sigkill", daemon=True).start()
    os.kill(pid, signal.SIGTERM)
