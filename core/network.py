"""L2 in-process network cut: one audit hook refuses outbound sockets while the Guard in context is at L2+.

With no Guard in context (a bare thread, an executor) the process-wide rule applies: refuse when every
live Guard is at L2+.  A Guard that governs the whole process (``m99.init``'s, the SDK client's) cuts
every connection of the process, whatever Guard is in context.  Allow-listed destinations (the control
plane) always stay reachable.

The hook is installed with the first Guard, not at the first L2, because it also notes which Guard opened
each outbound connection: reaching L2 then shuts down that Guard's established connections (keep-alive
pools would otherwise go on talking to the SaaS).  Connections opened with no Guard in context are shut
down only when the process-wide rule holds.

What this does not cover: C extensions that open their own sockets (gRPC core, some database drivers),
subprocesses and shell-outs (they do not inherit the hook), and on Windows the shutdown of connections
established before L2.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = [
    "ConnectionRefusedByM99",
    "EgressRefusedByM99",
    "allow_destination",
    "allowed_destinations",
    "bind_context",
    "disallow_destination",
    "installed",
    "retire",
    "set_egress_rule",
    "state",
]

logger = logging.getLogger("m99.network")


class Guard(Protocol):
    """What the hook needs of a Guard (structural, so this module never imports ``m99.guard``)."""

    @property
    def name(self) -> str: ...

    @property
    def whole_process(self) -> bool: ...


# ``m99.guard.current_guard``, bound when that module is imported: which Guard governs this context.
_current: ContextVar[Any] = ContextVar("m99_unbound", default=None)


def bind_context(var: ContextVar[Any]) -> None:
    global _current
    _current = var


class ConnectionRefusedByM99(ConnectionRefusedError):
    """An outbound connection or name lookup refused by M99's L2 SaaS disconnection.

    An ``OSError`` so that HTTP clients report it as their ordinary connection error (httpx
    ``ConnectError``, urllib ``URLError``, requests ``ConnectionError``).
    """

    def __init__(self, event: str, destination: str, agent: str) -> None:
        super().__init__(
            errno.ECONNREFUSED,
            f"M99 L2 SaaS disconnection: {event} to {destination} refused for agent {agent!r}",
        )
        self.event = event
        self.destination = destination
        self.agent = agent


class EgressRefusedByM99(ConnectionRefusedByM99):
    """An outbound connection or lookup refused by the policy's FORBIDDEN.network (KILLSWITCH.md)."""

    def __init__(self, event: str, destination: str, agent: str = "policy") -> None:
        super().__init__(event, destination, agent)
        self.strerror = f"M99 policy FORBIDDEN.network: {event} to {destination} refused"
        self.args = (errno.ECONNREFUSED, self.strerror)


_EVENTS = frozenset(
    {
        "socket.connect",  # also raised by connect_ex
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
    }
)
_LOOKUPS = frozenset({"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"})

_lock = threading.Lock()
_installed = False
# The hook's one global check: False while no Guard is at L2+, so every other audit event costs a
# function call and one global load.  May stay True after a cut Guard is garbage-collected (harmless).
_hint = False
_live: weakref.WeakSet[Guard] = weakref.WeakSet()
_cut: weakref.WeakSet[Guard] = weakref.WeakSet()
_wide: weakref.WeakSet[Guard] = weakref.WeakSet()  # the cut Guards that govern the whole process
# Copy-on-write frozensets: the hook reads them without a lock.
_allowed_pairs: frozenset[tuple[str, int]] = frozenset()
_allowed_names: frozenset[str] = frozenset()
_allowed_ips: frozenset[str] = frozenset()
_registrations: dict[tuple[str, int], frozenset[tuple[str, int]]] = {}
_refusals = 0
_severed = 0
# Outbound connections by file descriptor: (owning Guard or None, host, port).  Keyed by fd, not by
# socket object, because TLS wrapping detaches the fd into a new socket object; bounded by the fd table.
# Entries of closed sockets linger until their fd is reused and are verified with getpeername.
_connections: dict[int, tuple[weakref.ref[Guard] | None, str, int]] = {}
# The same fds by owner, so a Guard reaching L2 visits its own connections only: with a Guard per
# agent, a scan of every connection per Guard would make a fleet-wide L2 quadratic in the Guards.
_owned: weakref.WeakKeyDictionary[Guard, set[int]] = weakref.WeakKeyDictionary()
_unowned: set[int] = set()


def _normalise(host: Any) -> str:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    text = str(host).strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# -- the hook -----------------------------------------------------------------------------------------


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    # Every audit event of the process comes through here: one set lookup for all but socket events.
    if event in _EVENTS:
        if _hint:
            _check(event, args)
        if _egress is not None:
            _check_egress(event, args)
        if event == "socket.connect":
            _track(args)


def _track(args: tuple[Any, ...]) -> None:
    try:
        sock, address = args[0], args[1]
        if not isinstance(address, tuple) or len(address) < 2:
            return
        fd = sock.fileno()
        if fd < 0:
            return
        guard = _current.get()
        previous = _connections.get(fd)
        if previous is not None:  # the fd was reused: it no longer belongs to its old owner
            _index(previous[0]).discard(fd)
        entry = (weakref.ref(guard) if guard is not None else None, _normalise(address[0]), int(address[1]))
        _connections[fd] = entry
        if guard is None:
            _unowned.add(fd)
        else:
            _owned.setdefault(guard, set()).add(fd)
    except Exception:  # bookkeeping must never break the host's connect
        return


def _index(owner_ref: weakref.ref[Guard] | None) -> set[int]:
    """The index set an entry's fd is in (a fresh empty set for a collected owner)."""
    if owner_ref is None:
        return _unowned
    owner = owner_ref()
    return _owned.get(owner, set()) if owner is not None else set()


def _check(event: str, args: tuple[Any, ...]) -> None:
    guard = _current.get()
    wide = next(iter(_wide), None) if _wide else None
    if wide is not None:  # the process's own Guard is cut: every connection of the process goes
        agent = guard.name if guard is not None and guard in _cut else wide.name
    elif guard is not None:
        if guard not in _cut:
            return
        agent = guard.name
    else:
        live = len(_live)
        if live == 0 or len(_cut) < live:
            return
        agent = "*"
    destination = _allowed_or_destination(event, args)
    if destination is None:
        return
    global _refusals
    _refusals += 1  # a lost increment under a race only skews a diagnostic counter
    raise ConnectionRefusedByM99(event, destination, agent)


def _allowed_or_destination(event: str, args: tuple[Any, ...]) -> str | None:
    """None when the event may proceed, else a printable destination for the refusal."""
    if event in _LOOKUPS:
        looked_up = args[0] if args else None
        if looked_up is None:
            return None  # passive / loopback lookup, no resolver traffic
        name = _normalise(looked_up)
        if _is_ip(name) or name in _allowed_names:
            return None  # numeric lookups never leave the process; the connect is checked
        return f"{name} (name lookup)"
    if event == "socket.gethostbyaddr":
        reverse = _normalise(args[0]) if args else ""
        return None if reverse in _allowed_ips else f"{reverse} (reverse lookup)"
    if event == "socket.getnameinfo":
        sockaddr = args[0] if args else None
        reverse = _normalise(sockaddr[0]) if isinstance(sockaddr, tuple) and sockaddr else "?"
        return None if reverse in _allowed_ips else f"{reverse} (reverse lookup)"
    address = args[1] if len(args) > 1 else None
    if address is None and event == "socket.sendmsg":
        return None  # a connected socket: its connect was already checked
    if isinstance(address, tuple) and len(address) >= 2:
        host = _normalise(address[0])
        try:
            port = int(address[1])
        except (TypeError, ValueError):
            return f"{host}:{address[1]!r}"
        return None if (host, port) in _allowed_pairs else f"{host}:{port}"
    # AF_UNIX paths and anything unexpected: refused unless allow-listed with port 0 (fail closed).
    path = address.decode("utf-8", "replace") if isinstance(address, bytes) else str(address)
    return None if (path, 0) in _allowed_pairs else f"unix:{path}"


# -- a policy's egress rule (KILLSWITCH.md FORBIDDEN.network) ------------------------------------------

# ``rule(host, port) -> bool``: whether the process may reach a destination, whatever its level.  The
# control plane's allow-listed destinations always pass; so do the addresses an allowed name resolved to.
_egress: Callable[[str, int | None], bool] | None = None
_resolved: dict[str, None] = {}  # addresses of allowed names (insertion-ordered, bounded)
_resolving = threading.local()


def set_egress_rule(rule: Callable[[str, int | None], bool] | None) -> None:
    """Refuse outbound connections and lookups ``rule`` does not allow (None: no rule)."""
    global _egress
    install()
    _resolved.clear()
    _egress = rule


def _remember_addresses(name: str) -> None:
    # The connect that follows a lookup names an address, not the allowed name: resolve it here too,
    # once, and let its addresses through.  Re-entered by our own lookup: skipped.
    if getattr(_resolving, "on", False):
        return
    _resolving.on = True
    try:
        for info in socket.getaddrinfo(name, None):
            _resolved[_normalise(info[4][0])] = None
        while len(_resolved) > 4096:
            _resolved.pop(next(iter(_resolved)))
    except OSError:
        pass
    finally:
        _resolving.on = False


def _check_egress(event: str, args: tuple[Any, ...]) -> None:
    rule = _egress
    if rule is None or getattr(_resolving, "on", False):
        return
    if event in _LOOKUPS:
        looked_up = args[0] if args else None
        if looked_up is None:
            return
        name = _normalise(looked_up)
        if _is_ip(name) or name in _allowed_names:
            return
        if not rule(name, None):
            raise EgressRefusedByM99(event, f"{name} (name lookup)")
        if name not in ("localhost",):
            _remember_addresses(name)
        return
    address = args[1] if len(args) > 1 else None
    if not (isinstance(address, tuple) and len(address) >= 2):
        return  # connected sockets (already checked) and AF_UNIX paths: not egress
    host = _normalise(address[0])
    try:
        port = int(address[1])
    except (TypeError, ValueError):
        port = 0
    if (host, port) in _allowed_pairs or host in _resolved or rule(host, port):
        return
    raise EgressRefusedByM99(event, f"{host}:{port}")


# -- state, driven by the Guards ------------------------------------------------------------------------


def install() -> None:
    """Install the audit hook once; it cannot be removed, so it consults live state on every event."""
    global _installed
    with _lock:
        if _installed:
            return
        sys.addaudithook(_audit_hook)
        _installed = True
        logger.debug("m99: network audit hook installed")


def installed() -> bool:
    return _installed


def register(guard: Guard) -> None:
    """Count ``guard`` among the live Guards (process-wide rule) and start noting its connections."""
    install()
    with _lock:
        _live.add(guard)


def cut(guard: Guard) -> int:
    """``guard`` reached L2: refuse its outbound connections and shut down the established ones.

    Returns how many established connections were shut down.
    """
    global _hint
    install()
    whole = bool(getattr(guard, "whole_process", False))
    with _lock:
        _live.add(guard)
        _cut.add(guard)
        if whole:
            _wide.add(guard)
        _hint = True
        everyone = len(_cut) >= len(_live)
    return _sever(guard, everyone, whole)


def _sever(guard: Guard, everyone: bool, whole: bool = False) -> int:
    """Shut down (not close: the owner keeps its fd, and fd reuse stays impossible) matching connections:
    ``guard``'s own, the unowned ones too when ``everyone`` is cut, and all of them when ``whole``."""
    global _severed
    if sys.platform == "win32":
        return 0
    count = 0
    if whole:
        candidates = set(_connections)
        _owned.clear()
        _unowned.clear()
    else:
        candidates = set(_owned.pop(guard, ()))
        if everyone:
            candidates |= _unowned
            _unowned.clear()
    for fd in candidates:
        entry = _connections.get(fd)
        if entry is None:
            continue
        owner_ref, host, port = entry
        owner = owner_ref() if owner_ref is not None else None
        if not whole and owner is not guard and not (owner_ref is None and everyone):
            continue  # reused by another owner since it was indexed
        if (host, port) in _allowed_pairs:
            continue
        if _shutdown_if_peer(fd, host, port):
            count += 1
        _connections.pop(fd, None)
    _severed += count
    if count:
        logger.warning("m99: L2 shut down %d established connection(s) of agent %r", count, guard.name)
    return count


def _shutdown_if_peer(fd: int, host: str, port: int) -> bool:
    try:
        dup = os.dup(fd)
    except OSError:
        return False  # closed since
    try:
        probe = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)  # reused for something that is not a socket
        return False
    try:
        peer = probe.getpeername()
        if not isinstance(peer, tuple) or (_normalise(peer[0]), int(peer[1])) != (host, port):
            return False  # the fd now belongs to another connection
        probe.shutdown(socket.SHUT_RDWR)  # acts on the connection, so on every fd sharing it
        return True
    except OSError:
        return False
    finally:
        probe.close()


def uncut(guard: Guard) -> None:
    """``guard`` fell below L2."""
    global _hint
    with _lock:
        _cut.discard(guard)
        _wide.discard(guard)
        _hint = len(_cut) > 0


def retire(guard: Guard) -> None:
    """``guard``'s agent has shut down its session: it no longer counts in the process-wide rule
    for connections made outside any Guard's context."""
    global _hint
    with _lock:
        _cut.discard(guard)
        _wide.discard(guard)
        _live.discard(guard)
        _hint = len(_cut) > 0


def is_cut(guard: Guard) -> bool:
    return guard in _cut


def refusals() -> int:
    return _refusals


# -- the allow-list --------------------------------------------------------------------------------------


def allow_destination(host: str, port: int) -> None:
    """Keep ``host:port`` reachable at L2 (the control plane).

    A name is resolved now, and its addresses allowed too; call again to pick up DNS changes.  A Unix
    socket path may be allowed with ``port=0``.
    """
    global _allowed_names
    if not host:
        raise ValueError("allow_destination needs a host")
    port = int(port)
    name = host if port == 0 else _normalise(host)  # port 0: a Unix socket path, case-sensitive
    pairs = {(name, port)}
    with _lock:
        # Allow the name first: the resolution below passes through the hook.
        _allowed_names = _allowed_names | {name}
    if not _is_ip(name) and port > 0:
        try:
            for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                pairs.add((_normalise(info[4][0]), port))
        except OSError as exc:
            logger.warning(
                "m99: could not resolve allow-listed %s:%d now (%s); only the name is allowed",
                host,
                port,
                exc,
            )
    with _lock:
        _registrations[(name, port)] = frozenset(pairs)
        _rebuild()


def disallow_destination(host: str, port: int) -> None:
    """Undo exactly one ``allow_destination(host, port)``."""
    with _lock:
        port = int(port)
        _registrations.pop((host if port == 0 else _normalise(host), port), None)
        _rebuild()


def allowed_destinations() -> list[tuple[str, int]]:
    return sorted(_registrations)


def _rebuild() -> None:
    global _allowed_pairs, _allowed_names, _allowed_ips
    pairs: set[tuple[str, int]] = set()
    for registered in _registrations.values():
        pairs |= registered
    _allowed_pairs = frozenset(pairs)
    _allowed_names = frozenset(name for name, _ in _registrations)
    _allowed_ips = frozenset(host for host, _ in pairs if _is_ip(host))


def state() -> dict[str, Any]:
    """Diagnostics: whether the hook is installed, how many Guards are live / cut, the allow-list."""
    return {
        "installed": _installed,
        "live_guards": len(_live),
        "cut_guards": len(_cut),
        "allowed": [f"{h}:{p}" for h, p in allowed_destinations()],
        "refusals": _refusals,
        "severed": _severed,
    }


def refuses_for(guard: Guard) -> bool:
    """Whether the gate refuses an outbound connection made in ``guard``'s context now: the same check a
    real ``connect`` meets, asked of a documentation-only address (192.0.2.1), no socket opened."""
    token = _current.set(guard)
    try:
        _check("socket.connect", (None, ("192.0.2.1", 9)))
    except ConnectionRefusedByM99:
        return True
    finally:
        _current.reset(token)
    return False


def open_connections(guard: Guard) -> int:
    """How many of ``guard``'s outbound connections are still tracked as established (0 once cut)."""
    with _lock:
        return len(_owned.get(guard, ()))
