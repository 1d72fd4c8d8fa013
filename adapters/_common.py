"""What every adapter shares: finding the Guards that govern a framework call, asking them, and
feeding them usage.  Never imports an agent framework.

Enforcement helpers fail closed (a broken Guard check refuses); observation helpers never raise.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

from m99.errors import M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused
from m99.guard import Guard, current_guard

__all__ = [
    "GuardResolver",
    "GuardSource",
    "Guards",
    "RefusalStreak",
    "Resolve",
    "allows_messages",
    "as_resolver",
    "check_model",
    "check_tool",
    "default_resolver",
    "governing",
    "halted",
    "idle",
    "model_limits",
    "note_task",
    "observing",
    "offered",
    "record_model",
    "record_tool",
    "redact",
    "redacting",
    "reset_streaks",
    "scoped",
    "set_refusal_limit",
]

logger = logging.getLogger("m99.adapters")

Guards: TypeAlias = tuple[Guard, ...]
# How a framework hook finds its Guards: given the framework agent's name (or None), every Guard
# that governs the call, most specific first.
Resolve: TypeAlias = Callable[[str | None], Guards]


class GuardResolver:
    """Which Guards govern a call made by a framework agent.

    A call is governed by, most specific first: the Guard bound to the framework agent's name
    (``bind``: a CrewAI role, an AutoGen agent name, a LangChain ``create_agent(name=...)``), the
    context's ``current_guard`` (``with guard.activate():``), and the process default (the Guard
    ``m99.init`` made).  Enforcement asks *all* of them, so a kill of the process's Guard stops every
    agent in it while a kill scoped to one agent's Guard stops only that agent.  Usage is recorded
    on the most specific one only.
    """

    def __init__(
        self,
        default: Guard | Callable[[], Guard | None] | None = None,
        agents: Mapping[str, Guard] | None = None,
    ) -> None:
        self._default = default
        self._plain = _plain(default)
        self._agents: dict[str, Guard] = dict(agents or {})
        self._lock = threading.Lock()

    @property
    def default(self) -> Guard | None:
        source = self._default
        if source is None or isinstance(source, Guard):
            return source
        return source()

    @default.setter
    def default(self, value: Guard | Callable[[], Guard | None] | None) -> None:
        self._plain = None  # a reader between these two writes takes the slow path
        self._default = value
        self._plain = _plain(value)

    def bind(self, agent: str, guard: Guard) -> Guard:
        """Make ``guard`` the M99 identity of the framework agent called ``agent``."""
        with self._lock:
            # Copy-on-write: resolve() reads the dict without the lock.
            self._agents = {**self._agents, agent: guard}
        return guard

    def unbind(self, agent: str) -> None:
        with self._lock:
            self._agents = {k: v for k, v in self._agents.items() if k != agent}

    @property
    def agents(self) -> dict[str, Guard]:
        return dict(self._agents)

    def resolve(self, agent: str | None = None) -> Guards:
        in_context = current_guard.get()
        if in_context is None and not (agent and agent in self._agents):
            # The hot path: no bound agent, no context Guard, a fixed default -> a prebuilt tuple.
            plain = self._plain
            if plain is not None:
                return plain
        found: list[Guard] = []
        if agent:
            bound = self._agents.get(agent)
            if bound is not None:
                found.append(bound)
        if in_context is not None and in_context not in found:
            found.append(in_context)
        default = self.default
        if default is not None and default not in found:
            found.append(default)
        return tuple(found)

    __call__ = resolve


def _plain(default: Guard | Callable[[], Guard | None] | None) -> Guards | None:
    """What ``resolve`` returns with no bound agent and no context Guard; None when ``default`` is a
    callable, which must be asked on every call."""
    if default is None:
        return ()
    if isinstance(default, Guard):
        return (default,)
    return None


GuardSource: TypeAlias = GuardResolver | Guard | Callable[[], Guard | None] | None

# The resolver ``install()`` uses when given none; ``m99.init`` sets its default.
default_resolver = GuardResolver()


def as_resolver(source: GuardSource) -> GuardResolver:
    """Accept what ``install(guard_resolver)`` accepts: a resolver, a Guard, a callable, or None."""
    if source is None:
        return default_resolver
    if isinstance(source, GuardResolver):
        return source
    if isinstance(source, Guard) or callable(source):
        return GuardResolver(default=source)
    raise TypeError(f"expected a GuardResolver, a Guard or a callable returning one, not {source!r}")


def scoped(guard: Guard | GuardResolver | None) -> Resolve:
    """The resolution of a per-object wrapper: its own Guard first, then context and default.

    Keeping context and default means an explicit wrapper never escapes a process-wide kill.
    """
    if guard is None or isinstance(guard, GuardResolver):
        return as_resolver(guard).resolve
    if not isinstance(guard, Guard):
        raise TypeError(f"expected an m99 Guard, not {guard!r}")
    own = guard

    def resolve(agent: str | None = None) -> Guards:
        rest = default_resolver.resolve(agent)
        return (own, *(g for g in rest if g is not own))

    return resolve


def governing(resolve: Resolve, agent: str | None, *, tool: str | None = None) -> Guards:
    """The Guards for an enforcement decision; a resolver that fails refuses the call (fail closed)."""
    try:
        return resolve(agent)
    except Exception as exc:
        what = f"tool {tool!r}" if tool is not None else "call"
        message = f"M99: {what} refused: could not resolve the governing Guard ({exc!r}); failing closed"
        if tool is not None:
            raise ToolCallRefused(message, tool=tool, agent=agent or "") from exc
        raise ModelCallRefused(message, agent=agent or "") from exc


def observing(resolve: Resolve, agent: str | None) -> Guards:
    """The Guards for an observation (usage); a failing resolver is logged, never raised."""
    try:
        return resolve(agent)
    except Exception:
        logger.exception("m99: could not resolve the Guard for usage reporting")
        return ()


# -- enforcement: raise M99 errors, fail closed ---------------------------------------------------------


def check_tool(guards: Iterable[Guard], tool: str, args: Any = None, *, note: bool = True) -> None:
    """Raise ``ToolCallRefused`` unless every Guard lets ``tool`` run now (with ``args``: a policy's
    FORBIDDEN paths are looked for in them).  ``note`` False: the caller notes the call's start in the
    side-effect ledger itself (``started``) and carries its handle to the end."""
    for guard in guards:
        try:
            if guard.quiet:  # nothing set: the common case, one attribute read
                continue
            guard.check_tool(tool, args)
        except M99KillSwitchTriggered:
            _streak.refused(guard)
            raise
        except Exception as exc:
            _streak.refused(guard)
            raise ToolCallRefused(
                f"M99: tool {tool!r} refused: the Guard check failed ({exc!r}); failing closed",
                tool=tool,
                agent=_name(guard),
            ) from exc
    if _streak.active:  # usually no streak at all: skip the per-Guard weakref lookups
        for guard in guards:
            _streak.allowed(guard)
    if note:
        note_started(guards, tool, args)


def started(guards: Guards, tool: str, args: Any) -> int | None:
    """The side-effect ledger's handle of ``tool``'s call admitted now, for an adapter that carries it
    to the call's end itself (``record_tool(..., handle=)``): no context variable to set and read
    back.  Never raises (None: the end is then recorded without its start)."""
    try:
        return guards[0].effects.started(tool, args) if guards else None
    except Exception:
        logger.exception("m99: could not note a tool call's start")
        return None


# The tool call admitted last in this context (thread or asyncio task), for the side-effect ledger
# (``m99.effects``): ``check_tool`` notes its start and arguments, ``record_tool`` its end, so the
# evidence of a kill lists what each call was asked to do and which calls were in flight.  Concurrent
# calls run in tasks of their own, each with its own context.
_CALL: contextvars.ContextVar[tuple[Guard, str, int] | None] = contextvars.ContextVar("m99_tool_call", default=None)


def note_started(guards: Iterable[Guard], tool: str, args: Any) -> None:
    """``tool``'s call admitted in this context, with ``args``, for the side-effect ledger (never raises)."""
    try:
        guard = next(iter(guards), None)
        if guard is None:
            return
        previous = _CALL.get()
        if previous is not None:  # the call before ended unseen (it raised past its adapter): it ended
            previous[0].effects.finished(previous[2], previous[1], ok=False)
        _CALL.set((guard, tool, guard.effects.started(tool, args)))
    except Exception:
        logger.exception("m99: could not note a tool call's start")


def _ended(guard: Guard, tool: str) -> int | None:
    """The ledger handle of ``tool``'s call admitted in this context, if that is the one ending."""
    current = _CALL.get()
    if current is None or current[0] is not guard or current[1] != tool:
        return None
    _CALL.set(None)
    return current[2]


def idle(guards: Guards) -> bool:
    """Whether no Guard has anything set and no refusal streak is counting: every check would allow,
    redaction is the identity and there is no streak to clear, so a hook may return at once.  A Guard
    that cannot say raises, which an enforcing caller turns into a refusal (fail closed)."""
    for guard in guards:
        if not guard.quiet:
            return False
    return not _streak.active


def check_model(guards: Iterable[Guard], model: str | None = None, max_tokens: int | None = None) -> None:
    """Raise ``ModelCallRefused`` when a Guard halts model calls, a policy refuses this one (``model``
    and ``max_tokens`` make its worst case), or the agent kept calling refused tools."""
    for guard in guards:
        try:
            guard.check_model(model, max_tokens)  # one attribute test when nothing is set
        except M99KillSwitchTriggered:
            raise
        except Exception as exc:
            raise ModelCallRefused(
                f"M99: model call refused: the Guard check failed ({exc!r}); failing closed",
                agent=_name(guard),
            ) from exc
        if _streak.active:
            _streak.check(guard)


def model_limits(source: Any) -> tuple[str | None, int | None]:
    """A model call's name and ``max_tokens`` from its parameters (a mapping) or its client (an object),
    for a policy's worst case; (None, None) when they cannot be told.  Never raises."""
    try:

        def get(key: str) -> Any:
            return source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)

        name = next((v for k in ("model", "model_name", "model_id") if isinstance(v := get(k), str) and v), None)
        limit = None
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                limit = value
                break
        return name, limit
    except Exception:
        return None, None


def halted(guards: Iterable[Guard]) -> M99KillSwitchTriggered | None:
    """The error that ends the run now, or None (``check_status`` semantics: L3, L5+, lost lease)."""
    for guard in guards:
        try:
            guard.check_status()
        except M99KillSwitchTriggered as exc:
            return exc
        except Exception as exc:
            return M99KillSwitchTriggered(f"M99: status check failed ({exc!r}); failing closed", agent=_name(guard))
    return None


def allows_messages(guards: Iterable[Guard]) -> bool:
    try:
        for guard in guards:  # a loop, not all(<generator>): adapters ask on every tool call
            if not guard.quiet and not guard.allows_messages:
                return False
        return True
    except Exception:
        logger.exception("m99: allows_messages failed; withholding (fail closed)")
        return False


def offered(guards: Guards, names: Iterable[str]) -> set[str]:
    """Those of the tool ``names`` every Guard lets be offered to the model now (none if one cannot say)."""
    try:
        return {name for name in names if all(guard.may_offer(name) for guard in guards)}
    except Exception:
        logger.exception("m99: may_offer failed; offering no tool (fail closed)")
        return set()


def redacting(guards: Iterable[Guard]) -> bool:
    """Whether any Guard redacts now (L1+).  Below, ``redact`` is the identity, so an adapter may skip
    the work (copies, rebuilt messages) of applying it; a Guard that cannot say counts as redacting."""
    try:
        for guard in guards:  # a loop, not any(<generator>): adapters ask on every call
            if not guard.quiet and guard.redacting:
                return True
    except Exception:
        logger.exception("m99: redacting check failed; redacting (fail closed)")
        return True
    return False


def redact(guards: Iterable[Guard], value: Any) -> Any:
    """``value`` with every Guard's protected secrets redacted (identity below L1)."""
    for guard in guards:
        value = guard.redact(value)
    return value


# -- observation: never raises ----------------------------------------------------------------------------


_FROM_CONTEXT = -1  # ``record_tool``'s default: the ledger handle is the one noted in this context


def record_tool(guards: Guards, tool: str, *, ok: bool, result: Any = None, handle: int | None = _FROM_CONTEXT) -> None:
    """A tool call ended; ``handle`` from ``started`` when the adapter carried it, else the one
    ``check_tool`` noted in this context."""
    if not guards:
        return
    try:
        if handle == _FROM_CONTEXT:
            handle = _ended(guards[0], tool)
        guards[0].record_tool_call(tool, ok=ok, handle=handle, result=result)
        if len(guards) > 1:  # an agent's own Guard: the process's policy counts the call too
            gate = _outer_policy(guards)
            if gate is not None:
                gate.record_tool(tool, ok)
    except Exception:
        logger.exception("m99: could not record a tool call")


def _outer_policy(guards: Guards) -> Any:
    """The policy of a Guard past the first, unless the first enforces the same one."""
    own = guards[0].policy
    for guard in guards[1:]:
        gate = guard.policy
        if gate is not None and gate is not own:
            return gate
    return None


def record_model(
    guards: Guards, *, tokens: int = 0, cost_usd: float = 0.0, ok: bool = True, model: str | None = None
) -> None:
    if not guards:
        return
    try:
        guards[0].record_model_call(tokens=int(tokens or 0), cost_usd=float(cost_usd or 0.0), ok=ok, model=model)
        if len(guards) > 1:
            gate = _outer_policy(guards)
            if gate is not None:
                gate.settle(int(tokens or 0), float(cost_usd or 0.0), ok, model)
    except Exception:
        logger.exception("m99: could not record a model call")


def note_task(guards: Guards, text: Any) -> None:
    """What the agent is working on, kept by the Guard for evidence snapshots."""
    if not guards or not text:
        return
    try:
        guards[0].set_task(str(text))
    except Exception:
        logger.exception("m99: could not record the current task")


def _name(guard: Any) -> str:
    return str(getattr(guard, "name", ""))


# -- refused-tool streaks -------------------------------------------------------------------------------


class RefusalStreak:
    """Counts consecutive refused tool calls per Guard, so a model looping on refusals is stopped.

    At L4 models may still run; a model that keeps calling a refused write tool would otherwise spin
    until the framework's step limit (LangGraph's is 9,999).  After ``limit`` refusals in a row, at
    the same level, ``check`` refuses the next model call.  An allowed tool call, a level change or
    ``reset`` (a new run) clears the streak.
    """

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self._counts: weakref.WeakKeyDictionary[Guard, tuple[int, int]] = weakref.WeakKeyDictionary()
        # Whether any Guard may have a streak: read on every allowed call, so a plain attribute (it may
        # stay True after a Guard with a streak is collected; the next allowed call then clears it).
        self.active = False

    def refused(self, guard: Guard) -> None:
        try:
            level, count = self._counts.get(guard, (guard.level, 0))
            self._counts[guard] = (guard.level, count + 1 if level == guard.level else 1)
            self.active = True
        except Exception:  # an unhashable stand-in: no streak, enforcement unaffected
            logger.debug("m99: no refusal streak for %r", guard)

    def allowed(self, guard: Guard) -> None:
        self._counts.pop(guard, None)
        self.active = bool(self._counts)

    def reset(self, guards: Iterable[Guard]) -> None:
        if not self.active:
            return
        for guard in guards:
            self._counts.pop(guard, None)
        self.active = bool(self._counts)

    def count(self, guard: Guard) -> int:
        level, count = self._counts.get(guard, (0, 0))
        return count if level == guard.level else 0

    def check(self, guard: Guard) -> None:
        count = self.count(guard)
        if self.limit and count >= self.limit:
            raise ModelCallRefused(
                f"M99: agent {guard.name!r} stopped after {count} refused tool calls in a row at "
                f"L{guard.level}; read-only tools: {', '.join(sorted(guard.read_only_tools)) or 'none'}",
                level=guard.level,
                reason=guard.reason,
                agent=guard.name,
            )


_streak = RefusalStreak()


def reset_streaks(guards: Iterable[Guard]) -> None:
    _streak.reset(guards)


def set_refusal_limit(limit: int) -> None:
    """How many refused tool calls in a row stop the model (0 disables the stop)."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    _streak.limit = limit
