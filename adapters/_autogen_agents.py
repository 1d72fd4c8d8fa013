"""The AutoGen adapter's ``install()``: ``AssistantAgent``'s tool, model and inbox seams patched to ask the
Guard (and ``_autogen_stop``: how a halted team ends).  Nothing here ever cancels or raises into a running
tool.

AssistantAgent calls its workbenches directly (no runtime in between), and runs tool calls in a task
whose end-of-stream sentinel is only queued when every call *returns*: an exception or a cancellation on
that path hangs ``agent.run()`` forever.  So a refused tool call returns an error result, always.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import replace
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, TextMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import CreateResult, FunctionExecutionResult, RequestUsage

from m99.errors import M99KillSwitchTriggered, ToolCallRefused

from ._autogen_stop import put_in as _stop_cleanly
from ._autogen_stop import raised
from ._common import (
    Guards,
    GuardSource,
    Resolve,
    allows_messages,
    check_model,
    check_tool,
    governing,
    model_limits,
    note_task,
    observing,
    record_model,
    record_tool,
    redact,
    redacting,
)
from ._credentials import ModelKeys
from ._patch import Adapter, Installation
from .autogen import WITHHELD

__all__ = ["WITHHELD", "adapter", "install", "installed", "keys", "refusal_text", "tokens", "uninstall", "withheld"]

logger = logging.getLogger("m99.adapters.autogen")

SUPPORTED = {"autogen-agentchat": ">=0.7,<0.8", "autogen-core": ">=0.7,<0.8"}

keys = ModelKeys()


def refusal_text(exc: M99KillSwitchTriggered) -> str:
    return f"{exc} The tool did not run; do not call it again."


def withheld(message: BaseChatMessage) -> TextMessage:
    # A new TextMessage rather than an edited copy: whatever the original type carried (handoff
    # context, structured content, images) must not leak through.
    return TextMessage(source=message.source, content=WITHHELD, id=message.id)


def tokens(usage: Any) -> int:
    return int(getattr(usage, "prompt_tokens", 0) or 0) + int(getattr(usage, "completion_tokens", 0) or 0)


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


# -- the tool seam ----------------------------------------------------------------------------------------


def _tool_seam(state: Installation) -> Wrapper:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(previous)  # for a positional call (AutoGen passes keywords)

        async def _execute_tool_call(*args: Any, **kwargs: Any) -> tuple[FunctionCall, FunctionExecutionResult]:
            if not state.live:
                return await previous(*args, **kwargs)  # type: ignore[no-any-return]
            if args or "tool_call" not in kwargs:  # anything but AutoGen's keywords takes the slow path
                kwargs = dict(signature.bind(*args, **kwargs).arguments)
            call: FunctionCall = kwargs["tool_call"]
            name = call.name
            try:
                guards = governing(state.resolve, kwargs.get("agent_name"), tool=name)
                check_tool(guards, name, call.arguments)
                clean = _redact_arguments(guards, call) if redacting(guards) else call
            except ToolCallRefused as exc:
                return call, _error_execution(call, refusal_text(exc))
            except Exception as exc:  # fail closed, and never raise on this path (it would hang the agent)
                logger.exception("m99: tool gate failed for %s", name)
                return call, _error_execution(
                    call, f"M99: tool {name!r} refused: the gate failed ({exc!r}); failing closed"
                )
            if clean is not call:
                kwargs = {**kwargs, "tool_call": clean}
            done, result = await previous(**kwargs)
            record_tool(guards, name, ok=not result.is_error, result=result.content)
            if not redacting(guards):  # asked again: the level may have risen while the tool ran
                return done, result
            try:
                content = redact(guards, result.content)
            except Exception:
                logger.exception("m99: redaction failed; withholding the tool output")
                content = "[REDACTED:m99] (the tool output was withheld: redaction failed)"
            if content is not result.content:
                result = result.model_copy(update={"content": content})
            return done, result

        return _execute_tool_call

    return factory


def _error_execution(call: FunctionCall, text: str) -> FunctionExecutionResult:
    return FunctionExecutionResult(content=text, call_id=call.id, is_error=True, name=call.name)


def _redact_arguments(guards: Guards, call: FunctionCall) -> FunctionCall:
    try:
        arguments = json.loads(call.arguments)
    except (TypeError, ValueError):
        clean_text = redact(guards, call.arguments)
        return call if clean_text is call.arguments else replace(call, arguments=clean_text)
    clean = redact(guards, arguments)
    return call if clean is arguments else replace(call, arguments=json.dumps(clean))


# -- the model seams ----------------------------------------------------------------------------------------


def create_args(client: Any) -> Any:
    """What an AutoGen model client sends with each call (its model, ``max_tokens``), if it says."""
    inner = getattr(client, "inner", client)
    args = getattr(inner, "_create_args", None)
    if isinstance(args, dict) and args.get("model"):
        return args
    return {**(args if isinstance(args, dict) else {}), "model": type(inner).__name__}  # no model name: its client


def _model_gate(state: Installation, agent: str | None, client: Any) -> tuple[Guards, M99KillSwitchTriggered | None]:
    """Raise for a halted team/process Guard; return the stop for a halted agent-bound Guard.

    An agent with its own Guard (bound by name) that is halted ends its turn with a message, so a
    team goes on without it; a halted process or context Guard ends the whole run with an error.
    """
    guards = governing(state.resolve, agent)
    stop: M99KillSwitchTriggered | None = None
    try:
        check_model(guards, *model_limits(create_args(client)))  # the usual case: all of them allow it, in one pass
    except M99KillSwitchTriggered as exc:
        # The agent's own Guard (asked first) stops only its turn; any other ends the run.  Only on a
        # refusal: ``agents`` copies the bindings.
        bound = state.resolver.agents.get(agent) if agent else None
        if bound is None or not guards or guards[0] is not bound or exc.agent != bound.name:
            raise
        check_model(guards[1:])
        stop = exc
    if guards and stop is None:
        keys.protect(guards, getattr(client, "inner", client), label=f"autogen:{type(client).__name__}")
    return guards, stop


# ``_call_llm`` and ``_reflect_on_tool_use_flow`` are replaced, like ``on_messages_stream``, by plain
# functions returning a stream: AssistantAgent iterates what they return at once (``async for ... in
# cls._call_llm(...)``), so a refusal raised when called leaves the same statement, and an allowed
# call gains no generator layer that re-yields every item.


def _model_seam(state: Installation) -> Wrapper:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def _call_llm(cls: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
            if not state.live:
                return previous(cls, *args, **kwargs)  # type: ignore[no-any-return]
            agent = kwargs.get("agent_name")
            try:
                guards, stop = _model_gate(state, agent, kwargs.get("model_client"))
            except M99KillSwitchTriggered as exc:
                raised.note(exc)
                raise
            if stop is not None:
                return _once(
                    CreateResult(
                        finish_reason="stop",
                        content=f"Agent {agent!r} is stopped by the M99 kill switch and will not act. {stop}",
                        usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
                        cached=False,
                    )
                )
            return _recorded(previous(cls, *args, **kwargs), guards)

        return _call_llm

    return factory


async def _recorded(stream: AsyncGenerator[Any, None], guards: Guards) -> AsyncGenerator[Any, None]:
    """``stream`` (a model call's), reporting its usage; closed with this one, so a caller leaving early
    does not leave it to the garbage collector (try/finally: ``contextlib.aclosing`` cost a measured 1 %
    of an agent run here)."""
    try:
        async for item in stream:
            if isinstance(item, CreateResult):
                record_model(guards, tokens=tokens(item.usage), ok=True)
            yield item
    except Exception:
        record_model(guards, ok=False)
        raise
    finally:
        await stream.aclose()


async def _once(item: Any) -> AsyncGenerator[Any, None]:
    yield item


def _reflection_seam(state: Installation) -> Wrapper:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def _reflect_on_tool_use_flow(cls: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
            if state.live:
                agent = kwargs.get("agent_name")
                try:
                    _, stop = _model_gate(state, agent, kwargs.get("model_client"))
                except M99KillSwitchTriggered as exc:
                    raised.note(exc)
                    raise
                if stop is not None:
                    message = TextMessage(source=agent or "agent", content=f"Stopped by M99. {stop}")
                    return _once(Response(chat_message=message))
            return previous(cls, *args, **kwargs)  # type: ignore[no-any-return]

        return _reflect_on_tool_use_flow

    return factory


# -- the inbox seam ---------------------------------------------------------------------------------------


def _inbox_seam(state: Installation) -> Wrapper:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def on_messages_stream(
            self: AssistantAgent, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
        ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
            # A plain function returning the original stream, not an async generator re-yielding it:
            # every caller iterates the result at once (``async for ... in agent.on_messages_stream(...)``),
            # and a re-yielding layer would cost each event an extra generator step.
            if state.live:
                messages = _withhold_incoming(state.resolve, self.name, messages)
                if messages:
                    note_task(observing(state.resolve, self.name), getattr(messages[-1], "content", None))
            return previous(self, messages, cancellation_token)  # type: ignore[no-any-return]

        return on_messages_stream

    return factory


def _withhold_incoming(resolve: Resolve, receiver: str, messages: Sequence[BaseChatMessage]) -> list[Any]:
    """At L2 another agent's messages reach this one as ``WITHHELD`` (the user's task still does)."""
    for message in messages:
        if getattr(message, "source", None) not in (None, "user", receiver):
            break
    else:  # only the user's task and the agent's own messages: nothing to withhold
        return list(messages)
    receiver_open = allows_messages(governing(resolve, receiver))
    out: list[Any] = []
    for message in messages:
        source = getattr(message, "source", None)
        if source in (None, "user", receiver):
            out.append(message)
        elif not receiver_open or not allows_messages(governing(resolve, source)):
            out.append(withheld(message))
        else:
            out.append(message)
    return out


# -- install / uninstall ---------------------------------------------------------------------------------


def _put_in(state: Installation) -> None:
    state.wrap(AssistantAgent, "_execute_tool_call", _tool_seam(state))
    state.wrap(AssistantAgent, "_call_llm", _model_seam(state))
    state.wrap(AssistantAgent, "_reflect_on_tool_use_flow", _reflection_seam(state))
    state.wrap(AssistantAgent, "on_messages_stream", _inbox_seam(state))
    _stop_cleanly(state)  # a halted team ends with M99's error, not AutoGen's noise about it


adapter = Adapter("autogen", Installation, _put_in, supported=SUPPORTED)


def install(guard_resolver: GuardSource = None) -> None:
    """Patch ``AssistantAgent`` (existing agents included) and ``BaseGroupChat.run_stream`` to ask the
    Guard; idempotent.

    Tool calls are refused with an error result (the run goes on, the model is told why), model calls
    of a halted agent are refused, and at L2 other agents' messages are withheld.
    """
    adapter.install(guard_resolver)


def uninstall() -> None:
    """Put back exactly the attributes ``install`` replaced; idempotent."""
    adapter.uninstall()


def installed() -> bool:
    return adapter.installed()
