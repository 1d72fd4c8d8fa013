"""``m99 run``: stop an agent process from outside, with no cooperation from its code.

The ``Supervisor`` registers a Guard for the command, starts the command in its own process group
and, at L5/L6, kills that group (SIGTERM, grace, SIGKILL) instead of its own process.  It never
restarts the command.  Below L5 it leaves the command alone, unless asked to pause it while frozen.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .config import resolve_url
from .errors import ConfigError, M99KillSwitchTriggered
from .guard import Guard
from .levels import Level, valid_name
from .session import Session

__all__ = ["CommandNotExecutable", "CommandNotFound", "Supervisor", "describe_exit"]

# Signals a supervisor passes on to the command's process group.  SIGHUP too: the command runs in
# a session of its own, so a closing terminal would otherwise leave it running unsupervised.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_POLL = 0.05  # seconds between checks that the process group is gone during the grace period


class CommandNotFound(ConfigError):
    """The command to supervise does not exist (the shell's exit code 127)."""

    exit_code = 127


class CommandNotExecutable(ConfigError):
    """The command exists but cannot be executed (the shell's exit code 126)."""

    exit_code = 126


def describe_exit(returncode: int) -> tuple[str, int]:
    """``("exit 3", 3)`` or ``("killed by SIGKILL", 137)``: how a child ended and the shell's code for it."""
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}", 128 + number
    return f"exit {returncode}", returncode


def _resolve(command: Sequence[str]) -> str:
    """The executable ``command[0]`` names, found the way the shell finds it, or a 126/127 error."""
    program = command[0]
    found = shutil.which(program)
    if found is not None:
        return found
    if os.sep in program or (os.altsep and os.altsep in program):
        if Path(program).is_file():
            raise CommandNotExecutable(f"cannot run {program!r}: permission denied")
        raise CommandNotFound(f"cannot run {program!r}: no such file")
    raise CommandNotFound(f"cannot run {program!r}: command not found")


class Supervisor:
    """Runs ``command`` as a supervised agent named ``name`` (default: the command's basename).

    ``run()`` returns the exit code a shell would give the command: its own exit code, or 128+N
    when signal N ended it.  What the supervisor does at each level:

    - L1-L4: nothing to the command (its memory and sockets are out of reach); with
      ``pause_on_freeze`` the process group is stopped (SIGSTOP) while the Guard is frozen
      (L3, L4, or the lease lost) and continued (SIGCONT) when the freeze is lifted.
    - L5/L6: SIGTERM to the process group (then SIGCONT if paused), SIGKILL after
      ``grace_seconds``; the supervisor reports and exits, and never restarts the command.
    - Lease lost (control plane out of reach): the command is *not* killed, a lost lease is a
      freeze, not a termination.

    A command that leaves its process group (a daemon that calls ``setsid``) escapes the kill;
    run such a command in a container or cgroup whose teardown the supervisor's exit triggers.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str | None = None,
        kind: str = "process",
        url: str | None = None,
        grace_seconds: float = 5.0,
        pause_on_freeze: bool = False,
        key_file: str | None = None,
        policy: str | os.PathLike[str] | None = None,
    ) -> None:
        if not command:
            raise ConfigError("no command to run: give it after --, e.g. m99 run -- python agent.py")
        self.command = list(command)
        self.url = resolve_url(url)
        default = Path(self.command[0]).name
        if not name and not valid_name(default):
            raise ConfigError(f"cannot name the agent after the command ({default!r}): pass --name")
        self.name = name or default
        self.pause_on_freeze = pause_on_freeze
        self.key_file = key_file
        self.policy: Path | None = None
        if policy is not None:
            # Checked here, so an invalid file stops the run before the command starts; the command's own
            # m99.init (or M99Client) enforces it, handed over as $M99_POLICY.
            from .policy.parse import load_policy

            self.policy = Path(policy).resolve()
            load_policy(self.policy)
        self.guard = Guard(
            self.name,
            kind=kind,
            framework="process",
            terminate=self._terminate,
            grace_seconds=grace_seconds,
        )
        self.guard.on_change(self._on_change)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._paused = False
        self._killer: threading.Thread | None = None
        self._stopped_by: tuple[int, str] | None = None  # (level, reason) once the terminator sent SIGTERM
        self._escalated = False  # SIGKILL was needed
        self._forwarded: int | None = None  # the last signal the supervisor passed on

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """Register, run the command to its end, report on stderr, and return the shell's exit code.

        Raises ``M99Error`` (and starts nothing) when the command cannot be found, when the control
        plane refuses the registration (a tombstoned name) or is unreachable, and when the agent is
        already held at L5/L6 by the time it registers.
        """
        executable = _resolve(self.command)
        previous = self._install_signal_handlers()
        session: Session | None = None
        try:
            session = Session(self.guard, self.url, key_file=self.key_file).start()
            with self._lock:
                if self.guard.terminating:
                    level = Level(self.guard.level)
                    raise M99KillSwitchTriggered(
                        f"agent {self.name!r} is held at L{int(level)} {level.title} ({self.guard.reason}): "
                        "the command was not started",
                        level=int(level),
                        reason=self.guard.reason,
                        agent=self.name,
                    )
                if self._forwarded is not None:
                    name = signal.Signals(self._forwarded).name
                    print(f"m99 run: {name} before {self.name!r} started: not started", file=sys.stderr)
                    return 128 + self._forwarded
                self.proc = self._start(executable)
                self._sync_pause()
            returncode = self._wait()
            self._report(returncode)
            return describe_exit(returncode)[1]
        finally:
            if session is not None:
                session.close()  # no deregistration once terminating: the server tombstoned the name
            self._restore_signal_handlers(previous)

    def _start(self, executable: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "M99_TOKEN"}  # an agent never holds operator power
        env["M99_URL"] = self.url
        env["M99_SUPERVISED_AS"] = self.name
        if self.policy is not None:
            env["M99_POLICY"] = str(self.policy)
        try:
            return subprocess.Popen(
                [executable, *self.command[1:]],
                env=env,
                start_new_session=True,  # its own process group: killed as a whole, and not by our terminal
            )
        except FileNotFoundError:
            raise CommandNotFound(f"cannot run {self.command[0]!r}: no such file") from None
        except PermissionError:
            raise CommandNotExecutable(f"cannot run {self.command[0]!r}: permission denied") from None
        except OSError as exc:
            raise CommandNotExecutable(f"cannot run {self.command[0]!r}: {exc.strerror or exc}") from None

    def _wait(self) -> int:
        assert self.proc is not None
        returncode = self.proc.wait()
        killer = self._killer
        if killer is not None:
            # The terminator goes on until the whole group is gone (or SIGKILLed): wait for it.
            killer.join(self.guard.grace_seconds + 5)
        return returncode

    def _report(self, returncode: int) -> None:
        how, _ = describe_exit(returncode)
        who = f"m99 run: {self.name!r} (pid {self.proc.pid if self.proc else '?'})"
        if self._stopped_by is not None:
            level, reason = self._stopped_by
            title = Level(level).title if 1 <= level <= 6 else "termination"
            grace = f" after {self.guard.grace_seconds:g} s grace" if self._escalated else ""
            why = (
                reason
                if reason.startswith("stopped by")
                else f"stopped by M99 at L{level} {title}" + (f" ({reason})" if reason else "")
            )
            line = f"{who} {why}: {how}{grace}; not restarted"
        elif self._forwarded is not None:
            line = f"{who} stopped by {signal.Signals(self._forwarded).name} sent to the supervisor: {how}"
        else:
            line = f"{who} exited by itself: {how}"
        print(line, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the Guard's terminator
    def _terminate(self, grace_seconds: float) -> None:
        """Called by the Guard at L5/L6 in place of killing this process: kill the command's group.

        It returns at once (the Guard calls it on the thread that receives the control plane's push,
        and the acknowledgement must not wait for the grace period); a thread finishes the job.
        """
        with self._lock:
            proc = self.proc
            if proc is None or self._killer is not None:
                return  # not started yet: run() sees ``terminating`` and never starts it
            cause = (self.guard.level, self.guard.reason)
            self._killer = threading.Thread(
                target=self._kill_group, args=(proc.pid, grace_seconds, cause), name="m99-run-terminator", daemon=True
            )
            self._killer.start()

    def _kill_group(self, pgid: int, grace_seconds: float, cause: tuple[int, str]) -> None:
        if not self._signal(pgid, signal.SIGTERM):
            return  # the command had already ended by itself
        self._stopped_by = cause
        with self._lock:
            if self._paused:
                self._signal(pgid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
                self._paused = False
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            if not self._signal(pgid, 0):
                return  # every process of the group is gone
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
        if self._signal(pgid, signal.SIGKILL):
            self._escalated = True

    @staticmethod
    def _signal(pgid: int, sig: int) -> bool:
        """Send ``sig`` to the process group; False when no process of it is left."""
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # some member runs as another user: still there, but out of our reach
        return True

    # ------------------------------------------------------------------ pause on freeze
    def _on_change(self, guard: Guard, old: int, new: int) -> None:
        with self._lock:
            self._sync_pause()

    def _sync_pause(self) -> None:
        """Stop or continue the group to match the Guard (lock held); the terminator owns L5/L6."""
        proc = self.proc
        if not self.pause_on_freeze or proc is None or proc.returncode is not None or self.guard.terminating:
            return
        frozen = self.guard.frozen
        if frozen != self._paused and self._signal(proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT):
            self._paused = frozen

    # ------------------------------------------------------------------ signals sent to the supervisor
    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self._forwarded = signum
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._signal(proc.pid, signum)
        with self._lock:
            if self._paused:
                # Someone at the supervisor asked the command to stop; stopping outranks a freeze.
                self._signal(proc.pid, signal.SIGCONT)
                self._paused = False

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # only the main thread may set handlers; the caller owns signals then
        return {int(sig): signal.signal(sig, self._forward) for sig in FORWARDED}

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
