"""How a CrewAI run stopped by M99 ends: with M99's one-line error, not CrewAI's noise about it.

- ``M99RunStopped`` is a ``HookAborted`` (CrewAI's deliberate deny: no retries, no fail-open), marked as
  already logged for CrewAI's flow runtime, which would otherwise log "Error executing listener ..." for
  it at error level.
- CrewAI closes an agent execution's event scope only for errors it retries; a ``HookAborted`` leaves it
  open, and its event bus then prints "Event pairing mismatch" warnings as the task and the crew fail.
  For an M99 stop the adapter emits the ``AgentExecutionErrorEvent`` CrewAI leaves out.
- The run's entry points (``Crew.kickoff``, ``Agent.kickoff`` and their async forms) raise an M99 stop
  with the traceback cut at themselves: CrewAI's agent loop recurses once per step (its flow runtime's
  listeners), so the traceback of a run stopped after N steps grows by ~20 lines a step.  The full one is
  logged at DEBUG on ``m99.adapters.crewai``.

Only M99's own stops are treated so; every other error goes on exactly as CrewAI raises and logs it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from crewai import Agent, Crew
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.agent_events import AgentExecutionErrorEvent
from crewai.hooks import HookAborted

from m99.errors import M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused

from ._patch import Installation

__all__ = ["M99RunStopped", "M99ToolBlocked", "put_in"]

logger = logging.getLogger("m99.adapters.crewai")


class M99ToolBlocked(HookAborted, ToolCallRefused):
    """A tool call refused by M99.

    A ``HookAborted`` because CrewAI *swallows* every other exception from a hook and runs the tool
    anyway (fail-open); this one blocks the call and the agent is told why.
    """

    __module__ = "m99.adapters.crewai"  # where users find it (and where tracebacks name it)

    def __init__(self, cause: ToolCallRefused) -> None:
        ToolCallRefused.__init__(
            self, cause.message, tool=cause.tool, level=cause.level, reason=cause.reason, agent=cause.agent
        )
        self.source = "m99"


class M99RunStopped(HookAborted, ModelCallRefused):
    """Raised out of ``kickoff()`` when a halted agent reaches its next model call.

    A ``HookAborted`` so CrewAI treats it as a deliberate deny (no ``max_retry_limit`` retries, no
    fail-open handler) and an ``M99KillSwitchTriggered`` so callers can catch the kill switch.
    """

    __module__ = "m99.adapters.crewai"

    # CrewAI's flow runtime logs an error leaving a listener unless it says it was logged already: a
    # deliberate stop is not an error of the flow.
    _flow_listener_logged = True

    def __init__(self, cause: M99KillSwitchTriggered) -> None:
        ModelCallRefused.__init__(self, cause.message, level=cause.level, reason=cause.reason, agent=cause.agent)
        self.source = "m99"


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def _cut(stop: M99RunStopped) -> M99RunStopped:
    logger.debug("m99: %s; where CrewAI was when it stopped:", stop, exc_info=stop)
    return stop.with_traceback(None)


def _ends_cleanly(previous: Callable[..., Any]) -> Callable[..., Any]:
    """A sync entry point (``Crew.kickoff``, ``Agent.kickoff``, which may return a coroutine to await)."""

    def kickoff(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = previous(self, *args, **kwargs)
        except M99RunStopped as stop:
            raise _cut(stop) from None
        if inspect.iscoroutine(result):  # Agent.kickoff inside a running event loop (a Flow method)
            return _awaited(result)
        return result

    return kickoff


async def _awaited(coroutine: Awaitable[Any]) -> Any:
    try:
        return await coroutine
    except M99RunStopped as stop:
        raise _cut(stop) from None


def _ends_cleanly_async(previous: Callable[..., Any]) -> Callable[..., Any]:
    async def kickoff_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await previous(self, *args, **kwargs)
        except M99RunStopped as stop:
            raise _cut(stop) from None

    return kickoff_async


def _closes_the_agent_execution(state: Installation) -> Wrapper:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def _check_execution_error(self: Any, e: Exception, task: Any) -> Any:
            # CrewAI re-raises a HookAborted here without the error event that closes the agent
            # execution's scope; for M99's stop, emit it (then CrewAI re-raises as before).
            if isinstance(e, M99RunStopped) and state.live:
                try:
                    crewai_event_bus.emit(self, event=AgentExecutionErrorEvent(agent=self, task=task, error=str(e)))
                except Exception:  # observation: never in the way of the stop
                    logger.debug("m99: could not emit the agent execution error event", exc_info=True)
            return previous(self, e, task)

        return _check_execution_error

    return factory


def put_in(state: Installation) -> None:
    """The run entry points and the agent-execution error event, into CrewAI."""
    state.wrap(Agent, "_check_execution_error", _closes_the_agent_execution(state))
    for owner, name in ((Crew, "kickoff"), (Agent, "kickoff")):
        state.wrap(owner, name, _ends_cleanly)
    for owner, name in ((Crew, "kickoff_async"), (Crew, "akickoff"), (Agent, "kickoff_async")):
        state.wrap(owner, name, _ends_cleanly_async)
