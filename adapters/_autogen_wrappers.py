"""The AutoGen adapter's per-object variants: a workbench and a model client that ask the Guard, an
intervention handler that withholds a team's messages at L2, and ``M99Termination``, which ends a team
cleanly at the next turn when its Guard halts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from autogen_agentchat.base import TaskResult, TerminatedException, TerminationCondition
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, StopMessage, TextMessage
from autogen_agentchat.teams._group_chat._events import GroupChatAgentResponse, GroupChatTeamResponse
from autogen_core import CancellationToken, DefaultInterventionHandler, MessageContext
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import TextResultContent, Tool, ToolResult, ToolSchema, Workbench

from m99.errors import M99KillSwitchTriggered, ToolCallRefused
from m99.guard import Guard

from ._autogen_agents import WITHHELD, adapter, create_args, keys, refusal_text, tokens, withheld
from ._common import (
    GuardResolver,
    Guards,
    allows_messages,
    as_resolver,
    check_model,
    check_tool,
    governing,
    halted,
    model_limits,
    offered,
    record_model,
    record_tool,
    redact,
    redacting,
    scoped,
)
from ._credentials import protect_model_client

__all__ = [
    "WITHHELD",
    "GuardedModelClient",
    "GuardedWorkbench",
    "M99InterventionHandler",
    "M99Termination",
    "protect_client",
]

logger = logging.getLogger("m99.adapters.autogen")


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
            check_tool(guards, name, arguments)
            # Below L1 redaction is the identity: hand the arguments on as they came, uncopied.
            clean = redact(guards, dict(arguments or {})) if redacting(guards) else arguments
        except ToolCallRefused as exc:
            return _error_result(name, refusal_text(exc))
        except Exception as exc:  # never raise into AssistantAgent's tool task: it would hang
            logger.exception("m99: tool gate failed for %s", name)
            return _error_result(name, f"M99: tool {name!r} refused: the M99 gate failed ({exc!r}); failing closed")
        result = await self.inner.call_tool(name, clean, cancellation_token, call_id)
        if adapter.current is None:  # with install() the agent-level seam reports the call
            record_tool(guards, name, ok=not result.is_error, result=result.result)
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
            keys.protect((guard,), client, label=self._label)

    @property
    def _label(self) -> str:
        return f"autogen:{type(self.inner).__name__}"

    def _gate(self) -> Guards:
        guards = governing(self._resolve, None)
        check_model(guards, *model_limits(create_args(self.inner)))
        keys.protect(guards, self.inner, label=self._label)  # the Guards a resolver finds, too
        return guards

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        guards = self._gate()
        try:
            result = await self.inner.create(messages, **kwargs)
        except Exception:
            if adapter.current is None:  # with install() the agent-level seam reports the call
                record_model(guards, ok=False)
            raise
        if adapter.current is None:
            record_model(guards, tokens=tokens(result.usage), ok=True)
        return result

    async def create_stream(
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        guards = self._gate()
        async for chunk in self.inner.create_stream(messages, **kwargs):
            if isinstance(chunk, CreateResult) and adapter.current is None:
                record_model(guards, tokens=tokens(chunk.usage), ok=True)
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
        response = replace(message.response, chat_message=withheld(message.response.chat_message), inner_messages=None)
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
