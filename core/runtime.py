"""``m99.init``: the one line that puts an agent process under the kill switch.

It creates the process's Guard, connects it to the control plane (register, signed heartbeats, pushed
state), makes it the Guard every adapter asks, and installs the adapter of every installed framework
when the agent imports that framework (at once for one imported already): an agent pays for no
framework it does not use.  ``Runtime.agent`` gives one framework agent (a CrewAI role, an AutoGen agent
name, a LangChain ``create_agent(name=...)``) its own M99 identity, so a kill scoped to it stops only it.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .config import resolve_url
from .errors import ConfigError
from .guard import Guard
from .session import Session

__all__ = ["Runtime", "current", "init", "shutdown"]

log = logging.getLogger("m99")

# Environment variables protected at L1 by default: the usual names of model and SaaS API keys.
_DEFAULT_CREDENTIAL = re.compile(r"^[A-Z0-9_]*(API_KEY|ACCESS_KEY|SECRET_KEY|AUTH_TOKEN|API_TOKEN)$")
# M99's own settings are never stripped: the agent needs them to reach the control plane.
_OWN_PREFIX = "M99_"

_lock = threading.Lock()
_runtime: Runtime | None = None


def _adapters() -> Any:
    # ``m99.adapters`` ships in the same distribution but outside ``core``; imported by name so that
    # ``import m99`` stays light and the core type-checks on its own.
    return importlib.import_module("m99.adapters")


def default_credentials(environ: dict[str, str] | None = None) -> list[str]:
    """The environment variables ``init`` protects when not told which: ``*_API_KEY`` and the like."""
    env = os.environ if environ is None else environ
    return sorted(n for n in env if _DEFAULT_CREDENTIAL.match(n) and not n.startswith(_OWN_PREFIX))


class Runtime:
    """What ``m99.init`` returns: the process Guard and its session, the adapters, per-agent identities."""

    def __init__(self, guard: Guard, session: Session, *, url: str, options: dict[str, Any]) -> None:
        self.guard = guard
        self.session = session
        self.url = url
        self._options = options
        self._adapters: Any = None  # the AutoInstall of m99.adapters.install_on_import
        self._agents: dict[str, tuple[Guard, Session]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        return self.guard.name

    @property
    def installed(self) -> list[str]:
        """The adapters installed, in the order they were (one waiting joins when its framework is imported)."""
        return list(self._adapters.installed) if self._adapters is not None else []

    @property
    def waiting(self) -> list[str]:
        """The adapters that install when the agent imports their framework (none after shutdown)."""
        return list(self._adapters.waiting) if self._adapters is not None else []

    @property
    def skipped(self) -> dict[str, str]:
        """The adapters that will not install, and why: excluded, framework not installed, install failed."""
        return dict(self._adapters.skipped) if self._adapters is not None else {}

    def _installed_into(self, framework: str) -> None:
        """An adapter installed into ``framework``: the process now runs under it (``framework:`` scopes)."""
        self.guard.add_framework(framework)
        if self._adapters is not None:  # not during init, which logs what it installed at once
            log.info("m99: %s: %s was imported; the %s adapter is installed", self.name, framework, framework)

    @property
    def agents(self) -> dict[str, Guard]:
        """The framework agents given their own identity with ``agent()``."""
        with self._lock:
            return {name: guard for name, (guard, _) in self._agents.items()}

    def agent(
        self,
        name: str,
        *,
        kind: str | None = None,
        framework: str | Iterable[str] | None = None,
        read_only_tools: Iterable[str] = (),
        bind: str | Iterable[str] | None = None,
    ) -> Guard:
        """Register the framework agent ``bind`` (default ``name``) as its own M99 agent ``name``.

        The adapters then ask this Guard *and* the process Guard before each of its calls: a kill
        scoped to ``name`` stops only this agent, a kill of the process (or fleet) stops it too.
        ``bind`` is the framework's own name for it — a CrewAI role, an AutoGen agent name, a LangChain
        ``create_agent(name=...)`` — when it differs from the M99 name; several names make the M99
        agent a group (an AutoGen team's members, say).  ``framework``: what it runs under (a name or a
        list), matched by ``framework:`` scopes.
        """
        default_resolver = _adapters().default_resolver
        with self._lock:
            if self._closed:
                raise ConfigError("this m99 runtime is shut down")
            if name in self._agents:
                return self._agents[name][0]
        guard = Guard(
            name,
            kind=kind or self.guard.kind,
            framework=framework,
            read_only_tools=set(read_only_tools) | self.guard.read_only_tools,
            fail_open=self.guard.fail_open,
            grace_seconds=self.guard.grace_seconds,
        )
        for env_name in self._options["credentials"]:
            guard.protect_env(env_name)
        session = Session(
            guard,
            self.url,
            lease_seconds=self._options["lease_seconds"],
            server_public_key=self._options.get("server_key"),
            enrol_token=self._options.get("enrol_token"),
        ).start()
        with self._lock:
            self._agents[name] = (guard, session)
        for framework_name in [bind] if isinstance(bind, str) else list(bind or [name]):
            default_resolver.bind(framework_name, guard)
        return guard

    def close(self) -> None:
        """Uninstall the adapters, deregister every agent of this runtime (idempotent)."""
        global _runtime
        adapters = _adapters()
        default_resolver = adapters.default_resolver
        with self._lock:
            if self._closed:
                return
            self._closed = True
            agents = list(self._agents.items())
            self._agents.clear()
        if self._adapters is not None:
            self._adapters.cancel()  # a framework imported from now on gets no adapter
        adapters.uninstall_all()
        own = {guard for _, (guard, _session) in agents}
        for bound, guard in default_resolver.agents.items():
            if guard in own:
                default_resolver.unbind(bound)
        if default_resolver.default is self.guard:
            default_resolver.default = None
        for _, (_guard, session) in agents:
            session.close()
        self.session.close()
        if self.guard.policy is not None:
            self.guard.attach_policy(None)
        with _lock:
            if _runtime is self:
                _runtime = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<m99 Runtime {self.name!r} at {self.url} adapters={self.installed}>"


def init(
    name: str,
    *,
    kind: str = "agent",
    url: str | list[str] | None = None,
    framework: str | Iterable[str] | None = None,
    read_only_tools: Iterable[str] = (),
    credentials: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    fail_open: bool = False,
    grace_seconds: float = 5.0,
    lease_seconds: float | None = None,
    key_file: str | None = None,
    server_key: str | None = None,
    enrol_token: str | None = None,
    policy: str | os.PathLike[str] | bool | None = None,
    prices: Any = None,
) -> Runtime:
    """Put this process under the kill switch as agent ``name`` and install every available adapter.

    - ``url``: the control plane (default ``$M99_URL``, else http://localhost:8099); several replicas as a
      list or a comma-separated string.  Registration is blocking: an unreachable control plane or a
      tombstoned name raises here, before the agent runs.
    - ``key_file``: where the agent's key lives (default: one file per name in the agent key directory),
      so a restart resumes the same identity.  ``server_key`` (or ``$M99_SERVER_KEY``) pins the control
      plane's key; by default the first key seen is kept.  ``enrol_token`` (or ``$M99_ENROL_TOKEN``): for
      a control plane that enrols agents by token.
    - ``credentials``: environment variable names stripped at L1 and put back on restore; by default
      every ``*_API_KEY``/``*_SECRET_KEY``/``*_AUTH_TOKEN``-style variable set now.  Model clients the
      adapters see are revoked too.
    - ``read_only_tools``: tools that may still run under L4.
    - ``exclude``: adapters to leave alone (default ``$M99_DISABLED_ADAPTERS``).
    - ``framework``: what the agent reports it runs under before any adapter installs (a name or a
      list; default none, reported as ``custom``).  Each adapter that installs adds its framework, so
      ``framework:NAME`` scopes reach the process; excluded or missing frameworks are never reported.
    - ``fail_open``: keep running when the control plane is out of reach past the lease (default: freeze).
    - ``policy``: the KILLSWITCH.md enforced in this process (default ``$M99_POLICY``, else
      ./KILLSWITCH.md when present; ``False``: none).  An invalid file raises here.  ``prices``: the
      price table that turns tokens into dollars for its cost triggers (a mapping, a path; default
      ``$M99_PRICES``, else ``prices.json`` in the data directory).

    No framework is imported here: the adapter of an installed framework installs when the agent
    imports it, or at once if it already has.  Calling ``init`` again with the same name returns the
    running ``Runtime``; another name is an error until ``m99.shutdown()``.  The returned ``Runtime``
    says which adapters are ``installed``, which are ``waiting`` for their framework's import and which
    ``skipped`` (and why); with no framework at all it still guards the process (``check_status``,
    credentials, network).
    """
    global _runtime
    adapters = _adapters()
    default_resolver = adapters.default_resolver
    with _lock:
        if _runtime is not None:
            if _runtime.name == name:
                return _runtime
            raise ConfigError(
                f"m99 is already initialised as {_runtime.name!r} in this process; call m99.shutdown() first, "
                f"or use runtime.agent({name!r}) to give a framework agent its own identity"
            )
        if isinstance(credentials, str):
            raise ConfigError("credentials must be a list of environment variable names, not one string")
        target = resolve_url(url if isinstance(url, str) or url is None else ",".join(url))
        env_names = default_credentials() if credentials is None else list(credentials)
        gate = _policy_gate(policy, prices, name)
        guard = Guard(
            name,
            kind=kind,
            framework=framework,
            read_only_tools=read_only_tools,
            fail_open=fail_open,
            grace_seconds=grace_seconds,
            whole_process=True,
        )
        for env_name in env_names:
            guard.protect_env(env_name)
        if gate is not None:
            guard.attach_policy(gate)
        session = Session(
            guard,
            target,
            key_file=key_file,
            lease_seconds=lease_seconds,
            server_public_key=server_key,
            enrol_token=enrol_token,
        ).start()
        runtime = Runtime(
            guard,
            session,
            url=target,
            options={
                "credentials": env_names,
                "lease_seconds": lease_seconds,
                "server_key": server_key,
                "enrol_token": enrol_token,
            },
        )
        default_resolver.default = guard
        try:
            runtime._adapters = adapters.install_on_import(
                default_resolver, exclude=exclude, on_install=runtime._installed_into
            )
        except BaseException:  # a bad ``exclude``: nothing was installed or hooked
            default_resolver.default = None
            session.close()
            raise
        _runtime = runtime
    skipped = "; ".join(f"{k}: {v}" for k, v in runtime.skipped.items())
    log.info(
        "m99: %s registered at %s (L%d); adapters installed: %s; waiting for their framework's import: %s%s",
        name,
        target,
        guard.level,
        ", ".join(runtime.installed) or "none",
        ", ".join(runtime.waiting) or "none",
        f"; skipped: {skipped}" if skipped else "",
    )
    return runtime


def _policy_gate(policy: Any, prices: Any, name: str) -> Any:
    if policy is False:
        return None
    from .config import resolve_data_dir
    from .policy.gate import load_for_process

    return load_for_process(policy, agent=name, prices=prices, data_dir=resolve_data_dir())


def current() -> Runtime | None:
    """The runtime ``init`` started in this process, if any."""
    return _runtime


def shutdown() -> None:
    """Undo ``init``: uninstall the adapters and deregister (no-op when not initialised)."""
    runtime = _runtime
    if runtime is not None:
        runtime.close()
