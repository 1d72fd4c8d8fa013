"""``M99Client``: the seed SDK an agent uses (``register``, background heartbeats, ``check_status``
raising ``M99KillSwitchTriggered``).  ``OperatorClient`` (the operators' side) lives in ``m99.operator``
and is importable from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .config import resolve_url
from .errors import M99Error
from .guard import Guard
from .operator import OperatorClient
from .session import Session

__all__ = ["M99Client", "OperatorClient"]

log = logging.getLogger("m99.client")


class M99Client:
    """The seed SDK, thin over a ``Guard`` and its ``Session``: register an agent, heartbeat
    in the background, and ``check_status()`` from memory (state is pushed, never polled).

    >>> client = M99Client("http://localhost:8099")
    >>> client.register("my-agent", "autonomous")
    >>> client.check_status()      # raises M99KillSwitchTriggered once the switch fires
    """

    def __init__(
        self,
        url: str | list[str] | None = None,
        *,
        key_file: str | None = None,
        server_key: str | None = None,
        enrol_token: str | None = None,
        policy: Any = None,
        prices: Any = None,
        **guard_options: Any,
    ) -> None:
        self.url = resolve_url(url if isinstance(url, str) or url is None else ",".join(url))
        self._key_file = key_file
        self._server_key = server_key
        self._enrol_token = enrol_token
        self._guard_options = guard_options
        # KILLSWITCH.md as ``m99.init`` takes it: a path, False for none, default ``$M99_POLICY`` or ./KILLSWITCH.md.
        self._policy, self._prices = policy, prices
        self.guard: Guard | None = None
        self.session: Session | None = None

    @property
    def name(self) -> str | None:
        return self.guard.name if self.guard else None

    @property
    def agent_id(self) -> str | None:
        return self.session.link.agent_id if self.session else None

    def register(
        self,
        name: str,
        kind: str = "agent",
        *,
        framework: str | Iterable[str] | None = None,
        read_only_tools: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Register (blocking: a refusal raises here) and start background heartbeats and the push stream.
        The agent's key is kept in a file per name (``key_file=`` to choose it), so a restart resumes the
        same identity."""
        if self.session is not None:
            raise M99Error(f"this client already registered {self.name!r}; use one client per agent")
        from .runtime import _policy_gate

        gate = _policy_gate(self._policy, self._prices, name)  # an invalid file raises before registering
        guard = Guard(name, kind=kind, framework=framework, read_only_tools=set(read_only_tools), **self._guard_options)
        if gate is not None:
            guard.attach_policy(gate)
        self.session = Session(
            guard, self.url, key_file=self._key_file, server_public_key=self._server_key, enrol_token=self._enrol_token
        ).start()
        self.guard = guard
        return self.session.link.registration

    def _require(self) -> Guard:
        if self.guard is None:
            raise M99Error("not registered: call register(name, kind) first")
        return self.guard

    def check_status(self) -> None:
        """Raise ``M99KillSwitchTriggered`` if the switch holds this agent (L3, L5, L6, or a lost lease)."""
        self._require().check_status()

    @property
    def level(self) -> int:
        return self._require().level

    def heartbeat(self) -> dict[str, Any]:
        """Send one heartbeat now (the session also sends them in the background)."""
        if self.session is None:
            raise M99Error("not registered: call register(name, kind) first")
        return self.session.heartbeat()

    def close(self) -> None:
        """Deregister and stop the background work; the client may ``register`` again afterwards."""
        session, self.session = self.session, None
        if session is not None:
            session.close()
        if self.guard is not None and self.guard.policy is not None:
            self.guard.attach_policy(None)

    async def aclose(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.aclose()

    def __enter__(self) -> M99Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> M99Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
