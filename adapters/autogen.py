"""AutoGen (agentchat 0.7) adapter: ``install()`` patches ``AssistantAgent``'s tool, model and inbox
seams; per-object variants wrap a workbench or a model client, intercept a team runtime's messages
and end a team (``M99Termination``).  Nothing here ever cancels or raises into a running tool.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from m99.errors import AdapterUnavailable, M99KillSwitchTriggered, ToolCallRefused
from m99.guard import Guard

from ._common import (
    GuardResolver,
    Guards,
    GuardSource,
    Resolve,
    allows_messages,
    as_resolver,
    check_model,
    check_tool,
    governing,
    halted,
    note_task,
    observing,
    offered,
    record_model,
    record_tool,
    redact,
    redacting,
    scoped,
)
from ._credentials import ModelKeys, protect_model_client

try:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.base import Response, TaskResult, TerminatedException, TerminationCondition
    from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, StopMessage, TextMessage
    from autogen_agentchat.teams import BaseGroupChat
    from autogen_agentchat.teams._group_chat._events import GroupChatAgentResponse, GroupChatTeamResponse
    from autogen_core import CancellationToken, DefaultInterventionHandler, FunctionCall, MessageContext
    from autogen_core.models import (
        ChatCompletionClient,
        CreateResult,
        FunctionExecutionResult,
        LLMMessage,
        ModelCapabilities,
        ModelInfo,
        RequestUsage,
    )
    from autogen_core.tools import TextResultContent, Tool, ToolResult, ToolSchema, Workbench
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise AdapterUnavailable(
        f"the AutoGen adapter needs autogen-agentchat ({exc.name} is missing): pip install 'm99[autogen]'"
    ) from exc

__all__ = [
    "WITHHELD",
    "GuardedModelClient",
    "GuardedWorkbench",
    "M99InterventionHandler",
    "M99Termination",
    "install",
    "installed",
    "protect_client",
    "uninstall",
]

logger = logging.getLogger("m99.adapters.autogen")

SUPPORTED = {"autogen-agentchat": ">=0.7,<0.8", "autogen-core": ">=0.7,<0.8"}

WITHHELD = "[withheld by M99: agent-to-agent messages are cut (L2 SaaS disconnection)]"


def _refusal_text(exc: M99KillSwitchTriggered) -> str:
    return f"{exc} The tool did not run; do not call it again."


def _withheld(message: BaseChatMessage) -> TextMessage:
    # A new TextMessage rather than an edited copy: whatever the original type carried (handoff
    # context, structured content, images) must not leak through.
    return TextMessage(source=message.source, content=WITHHELD, id=message.id)


def _tokens(usage: Any) -> int:
    return int(getattr(usage, "prompt_tokens", 0) or 0) + int(getattr(usage, "completion_tokens", 0) or 0)


# -- global install: AssistantAgent's seams ----------------------------------------------------------------
#
# AssistantAgent calls its workbenches directly (no runtime in between), and runs tool calls in a task
# whose end-of-stream sentinel is only queued when every call *returns*: an exception or a cancellation
# on that path hangs agent.run() forever.  So a refused tool call returns an error result, always.


class _State:
    def __init__(self, resolver: GuardResolver) -> None:
        self.resolver = resolver


_lock = threading.Lock()
_state: _State | None = None
_keys = ModelKeys()
_originals: dict[str, Any] = {}
_PATCHED = ("_execute_tool_call", "_call_llm", "_reflect_on_tool_use_flow", "on_messages_stream")
# The unpatched functions while installed (staticmethod/classmethod unwrapped), read on every call.
_funcs: dict[str, Any] = {}
_TOOL_CALL_SIGNATURE: inspect.Signature | None = None  # for a positional call (AutoGen uses keywords)


def _original(name: str) -> Any:
    """The unpatched function (unwrapping staticmethod/classmethod)."""
    func = _funcs.get(name)
    if func is not None:
        return func
    value = _originals.get(name) or AssistantAgent.__dict__[name]
    return getattr(value, "__func__", value)


async def _execute_tool_call(*args: Any, **kwargs: Any) -> tuple[FunctionCall, FunctionExecutionResult]:
    func = _original("_execute_tool_call")
    state = _state
    if state is None:
        return await func(*args, **kwargs)  # type: ignore[no-any-return]
    if args or "tool_call" not in kwargs:  # AutoGen passes keywords only; anything else takes the slow path
        global _TOOL_CALL_SIGNATURE
        if _TOOL_CALL_SIGNATURE is None:
            _TOOL_CALL_SIGNATURE = inspect.signature(func)
        kwargs = dict(_TOOL_CALL_SIGNATURE.bind(*args, **kwargs).arguments)
        args = ()
    call: FunctionCall = kwargs["tool_call"]
    name = call.name
    try:
        guards = governing(state.resolver.resolve, kwargs.get("agent_name"), tool=name)
        check_tool(guards, name)
        clean = _redact_arguments(guards, call) if redacting(guards) else call
    except ToolCallRefused as exc:
        return call, _error_execution(call, _refusal_text(exc))
    except Exception as exc:  # fail closed, and never raise on this path (it would hang the agent)
        logger.exception("m99: tool gate failed for %s", name)
        return call, _error_execution(call, f"M99: tool {name!r} refused: the gate failed ({exc!r}); failing closed")
    if clean is not call:
        kwargs = {**kwargs, "tool_call": clean}
    done, result = await func(**kwargs)
    record_tool(guards, name, ok=not result.is_error)
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


def _model_gate(state: _State, agent: str | None, client: Any) -> tuple[Guards, M99KillSwitchTriggered | None]:
    """Raise for a halted team/process Guard; return the stop for a halted agent-bound Guard.

    An agent with its own Guard (bound by name) that is halted ends its turn with a message, so a
    team goes on without it; a halted process or context Guard ends the whole run with an error.
    """
    guards = governing(state.resolver.resolve, agent)
    stop: M99KillSwitchTriggered | None = None
    try:
        check_model(guards)  # the usual case: all of them allow it, in one pass
    except M99KillSwitchTriggered as exc:
        # The agent's own Guard (asked first) stops only its turn; any other ends the run.  Only on a
        # refusal: ``agents`` copies the bindings.
        bound = state.resolver.agents.get(agent) if agent else None
        if bound is None or not guards or guards[0] is not bound or exc.agent != bound.name:
            raise
        check_model(guards[1:])
        stop = exc
    if guards and stop is None:
        _keys.protect(guards, getattr(client, "inner", client), label=f"autogen:{type(client).__name__}")
    return guards, stop


class _RaisedInTeams:
    """The M99 errors raised in agents lately, by their text: a team turns a participant's exception into
    ``RuntimeError("<type>: <message>")``, and ``_team_run_stream`` gives the caller the original back."""

    def __init__(self, size: int = 64) -> None:
        self._recent: OrderedDict[str, M99KillSwitchTriggered] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def note(self, exc: M99KillSwitchTriggered) -> None:
        key = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._recent[key] = exc
            self._recent.move_to_end(key)
            while len(self._recent) > self._size:
                self._recent.popitem(last=False)

    def recall(self, text: str) -> M99KillSwitchTriggered | None:
        # AutoGen's text: "<type>: <message>", then "\nTraceback:\n…" when it kept one.
        with self._lock:
            return self._recent.get(text.split("\nTraceback:", 1)[0])


_raised = _RaisedInTeams()


# ``_call_llm`` and ``_reflect_on_tool_use_flow`` are replaced, like ``on_messages_stream``, by plain
# functions returning a stream: AssistantAgent iterates what they return at once (``async for ... in
# cls._call_llm(...)``), so a refusal raised when called leaves the same statement, and an allowed
# call gains no generator layer that re-yields every item.


def _call_llm(cls: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
    func = _original("_call_llm")
    state = _state
    if state is None:
        return func(cls, *args, **kwargs)  # type: ignore[no-any-return]
    agent = kwargs.get("agent_name")
    try:
        guards, stop = _model_gate(state, agent, kwargs.get("model_client"))
    except M99KillSwitchTriggered as exc:
        _raised.note(exc)
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
    return _recorded(func(cls, *args, **kwargs), guards)


async def _recorded(stream: AsyncGenerator[Any, None], guards: Guards) -> AsyncGenerator[Any, None]:
    """``stream`` (a model call's), reporting its usage; closed with this one, so a caller leaving early
    does not leave it to the garbage collector (try/finally: ``contextlib.aclosing`` cost a measured 1 %
    of an agent run here)."""
    try:
        async for item in stream:
            if isinstance(item, CreateResult):
                record_model(guards, tokens=_tokens(item.usage), ok=True)
            yield item
    except Exception:
        record_model(guards, ok=False)
        raise
    finally:
        await stream.aclose()


async def _once(item: Any) -> AsyncGenerator[Any, None]:
    yield item


def _reflect_on_tool_use_flow(cls: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
    func = _original("_reflect_on_tool_use_flow")
    state = _state
    if state is not None:
        agent = kwargs.get("agent_name")
        try:
            _, stop = _model_gate(state, agent, kwargs.get("model_client"))
        except M99KillSwitchTriggered as exc:
            _raised.note(exc)
            raise
        if stop is not None:
            return _once(Response(chat_message=TextMessage(source=agent or "agent", content=f"Stopped by M99. {stop}")))
    return func(cls, *args, **kwargs)  # type: ignore[no-any-return]


def _on_messages_stream(
    self: AssistantAgent, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
    # A plain function returning the original stream, not an async generator re-yielding it: every
    # caller iterates the result at once (``async for ... in agent.on_messages_stream(...)``), and a
    # re-yielding layer would cost each event an extra generator step.
    func = _original("on_messages_stream")
    state = _state
    if state is not None:
        messages = _withhold_incoming(state.resolver.resolve, self.name, messages)
        if messages:
            note_task(observing(state.resolver.resolve, self.name), getattr(messages[-1], "content", None))
    return func(self, messages, cancellation_token)  # type: ignore[no-any-return]


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
            out.append(_withheld(message))
        else:
            out.append(message)
    return out


async def _team_run_stream(self: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
    """``BaseGroupChat.run_stream`` (``run`` too): a halt that ended the team as a participant's error
    reaches the caller as the M99 error it was, not as AutoGen's ``RuntimeError`` carrying its text."""
    stream = _team_original(self, *args, **kwargs)
    try:
        async for item in stream:
            yield item
    except RuntimeError as exc:
        original = _raised.recall(str(exc)) if _state is not None else None
        if original is None:
            raise
        raise original from exc
    finally:
        await stream.aclose()


_team_original: Any = BaseGroupChat.run_stream

_REPLACEMENTS: dict[str, Any] = {
    "_execute_tool_call": staticmethod(_execute_tool_call),
    "_call_llm": classmethod(_call_llm),
    "_reflect_on_tool_use_flow": classmethod(_reflect_on_tool_use_flow),
    "on_messages_stream": _on_messages_stream,
}


def install(guard_resolver: GuardSource = None) -> None:
    """Patch ``AssistantAgent`` (existing agents included) and ``BaseGroupChat.run_stream`` to ask the
    Guard; idempotent.

    Tool calls are refused with an error result (the run goes on, the model is told why), model calls
    of a halted agent are refused, and at L2 other agents' messages are withheld.
    """
    global _state, _team_original
    resolver = as_resolver(guard_resolver)
    with _lock:
        if _state is not None:
            _state.resolver = resolver
            return
        for name in _PATCHED:
            value = _originals[name] = AssistantAgent.__dict__[name]
            _funcs[name] = getattr(value, "__func__", value)
            setattr(AssistantAgent, name, _REPLACEMENTS[name])
        if BaseGroupChat.__dict__.get("run_stream") is not _team_run_stream:
            _team_original = BaseGroupChat.__dict__["run_stream"]
            BaseGroupChat.run_stream = _team_run_stream
        _state = _State(resolver)


def uninstall() -> None:
    """Put back exactly the attributes ``install`` replaced; idempotent."""
    global _state
    with _lock:
        if _state is None:
            return
        _state = None
        _funcs.clear()
        for name in _PATCHED:
            if AssistantAgent.__dict__.get(name) is _REPLACEMENTS[name]:
                setattr(AssistantAgent, name, _originals.pop(name))
            else:
                logger.warning("m99: AssistantAgent.%s was replaced by someone else; left as is", name)
                _originals.pop(name, None)
        if BaseGroupChat.__dict__.get("run_stream") is _team_run_stream:
            BaseGroupChat.run_stream = _team_original  # type: ignore[method-assign]
        else:  # ours, under another wrapper, passes through now that _state is None
            logger.warning("m99: BaseGroupChat.run_stream was replaced by someone else; left as is")


def installed() -> bool:
    return _state is not None


# -- per-object variants -------------------------------------------------------------------------------------


class GuardedWorkbench(Workbench):
    """A workbench whose refused calls return ``ToolResult(is_error=True)`` and never reach the tool.

    ``AssistantAgent(workbench=GuardedWorkbench(McpWorkbench(...), guard))``.  AssistantAgent streams
    only from a ``StaticStreamWorkbench`` itself, so through this wrapper tools are called unstreamed.
    """

    def __init__(self, workbench: Workbench, guard: Guard | GuardResolver | None = None) -> None:
        self.inner = workbench
        self._resolve = scoped(guard)

    async def list_tools(self) -> list[ToolSchema]:
        """The inner workbench's tools, less those the Guards do not offer now (none at L3, read-only
        ones at L4): an MCP server's new tools are not registered while frozen."""
        schemas = list(await self.inner.list_tools())
        try:
            guards = governing(self._resolve, None)
        except M99KillSwitchTriggered:
            return []
        if all(guard.quiet for guard in guards):
            return schemas
        keep = offered(guards, [str(s.get("name", "")) for s in schemas])
        return [s for s in schemas if str(s.get("name", "")) in keep]

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        try:
            guards = governing(self._resolve, None, tool=name)
            check_tool(guards, name)
            # Below L1 redaction is the identity: hand the arguments on as they came, uncopied.
            clean = redact(guards, dict(arguments or {})) if redacting(guards) else arguments
        except ToolCallRefused as exc:
            return _error_result(name, _refusal_text(exc))
        except Exception as exc:  # never raise into AssistantAgent's tool task: it would hang
            logger.exception("m99: tool gate failed for %s", name)
            return _error_result(name, f"M99: tool {name!r} refused: the M99 gate failed ({exc!r}); failing closed")
        result = await self.inner.call_tool(name, clean, cancellation_token, call_id)
        if _state is None:  # with install() the agent-level seam reports the call
            record_tool(guards, name, ok=not result.is_error)
        if not redacting(guards):  # asked again: the level may have risen while the tool ran
            return result
        parts = [_redact_part(guards, part) for part in result.result]
        changed = any(new is not old for new, old in zip(parts, result.result, strict=True))
        return result.model_copy(update={"result": parts}) if changed else result

    async def call_tool_stream(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> AsyncGenerator[Any | ToolResult, None]:
        yield await self.call_tool(name, arguments, cancellation_token, call_id)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def reset(self) -> None:
        await self.inner.reset()

    async def save_state(self) -> Mapping[str, Any]:
        return await self.inner.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self.inner.load_state(state)


def _error_result(name: str, text: str) -> ToolResult:
    return ToolResult(name=name, result=[TextResultContent(content=text)], is_error=True)


def _redact_part(guards: Guards, part: Any) -> Any:
    text = getattr(part, "content", None)
    if isinstance(part, TextResultContent) and isinstance(text, str):
        clean = redact(guards, text)
        return part if clean is text else part.model_copy(update={"content": clean})
    return part


class GuardedModelClient(ChatCompletionClient):
    """A model client whose ``create`` raises ``ModelCallRefused`` (an ordinary exception) when halted.

    The exception leaves ``agent.run()`` / ``team.run()`` (AutoGen re-raises a participant's error from
    ``team.run`` as ``RuntimeError``).  The wrapped client's API key is registered for L1.
    """

    def __init__(self, client: ChatCompletionClient, guard: Guard | GuardResolver | None = None) -> None:
        self.inner = client
        self._resolve = scoped(guard)
        if isinstance(guard, Guard):
            _keys.protect((guard,), client, label=self._label)

    @property
    def _label(self) -> str:
        return f"autogen:{type(self.inner).__name__}"

    def _gate(self) -> Guards:
        guards = governing(self._resolve, None)
        check_model(guards)
        _keys.protect(guards, self.inner, label=self._label)  # the Guards a resolver finds, too
        return guards

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        guards = self._gate()
        try:
            result = await self.inner.create(messages, **kwargs)
        except Exception:
            if _state is None:  # with install() the agent-level seam reports the call
                record_model(guards, ok=False)
            raise
        if _state is None:
            record_model(guards, tokens=_tokens(result.usage), ok=True)
        return result

    async def create_stream(
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        guards = self._gate()
        async for chunk in self.inner.create_stream(messages, **kwargs):
            if isinstance(chunk, CreateResult) and _state is None:
                record_model(guards, tokens=_tokens(chunk.usage), ok=True)
            yield chunk

    async def close(self) -> None:
        await self.inner.close()

    def actual_usage(self) -> RequestUsage:
        return self.inner.actual_usage()

    def total_usage(self) -> RequestUsage:
        return self.inner.total_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return self.inner.count_tokens(messages, tools=tools)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return self.inner.remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:
        return self.inner.capabilities

    @property
    def model_info(self) -> ModelInfo:
        return self.inner.model_info


class M99InterventionHandler(DefaultInterventionHandler):
    """Withholds an agent's team messages at L2 by rewriting their content.

    ``SingleThreadedAgentRuntime(intervention_handlers=[M99InterventionHandler(resolver)])`` passed to
    the team as ``runtime=``.  Never ``DropMessage`` (the group chat manager waits forever for a
    dropped response) and never an exception (the runtime drops the message too).
    """

    def __init__(self, guard: Guard | GuardResolver | None = None) -> None:
        self._resolve = scoped(guard)

    async def on_publish(self, message: Any, *, message_context: MessageContext) -> Any:
        try:
            if isinstance(message, GroupChatAgentResponse | GroupChatTeamResponse):
                if not allows_messages(governing(self._resolve, message.name)):
                    return _withhold_response(message)
        except Exception:
            logger.exception("m99: intervention failed; the message passes unchanged")
        return message


def _withhold_response(message: GroupChatAgentResponse | GroupChatTeamResponse) -> Any:
    if isinstance(message, GroupChatAgentResponse):
        response = replace(message.response, chat_message=_withheld(message.response.chat_message), inner_messages=None)
        return message.model_copy(update={"response": response})
    placeholder = TextMessage(source=message.name, content=WITHHELD)
    return message.model_copy(update={"result": TaskResult(messages=[placeholder], stop_reason=WITHHELD)})


class M99Termination(TerminationCondition):
    """Ends a team at the next turn when the team's Guard halts (L3, L5+, lost lease).

    ``RoundRobinGroupChat(..., termination_condition=MaxMessageTermination(20) | M99Termination(guard))``.
    Only the team-level Guards count (the given one, the context's, the process default): a kill
    scoped to one agent's own Guard stops that agent, not the team.
    """

    component_provider_override = "m99.adapters.autogen.M99Termination"

    def __init__(self, guard: Guard | GuardResolver | None = None) -> None:
        self._resolve = scoped(guard)
        self._terminated = False

    @property
    def terminated(self) -> bool:
        return self._terminated

    async def __call__(self, messages: Sequence[BaseAgentEvent | BaseChatMessage]) -> StopMessage | None:
        if self._terminated:
            raise TerminatedException("M99Termination has already fired")
        try:
            stop = halted(governing(self._resolve, None))
        except M99KillSwitchTriggered as exc:
            stop = exc
        if stop is None:
            return None
        self._terminated = True
        return StopMessage(content=f"Stopped by the M99 kill switch. {stop}", source="M99Termination")

    async def reset(self) -> None:
        self._terminated = False


def protect_client(client: Any, guard: Guard | None = None) -> Any:
    """Register where an AutoGen model client keeps its API key (``_client.api_key`` and the
    plaintext ``_raw_config["api_key"]``), so L1 revokes it; returns ``client``."""
    target = guard if guard is not None else as_resolver(None).default
    if target is None:
        raise ValueError("protect_client needs a Guard (none given and no process default)")
    protect_model_client(target, getattr(client, "inner", client), label=f"autogen:{type(client).__name__}")
    return client
