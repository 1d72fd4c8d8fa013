"""The CrewAI adapter's ``install()``: a check in front of CrewAI's tool-hook dispatcher, and global
before/after LLM-call hooks that consult the live Guard state.  A refused tool never runs; a halted
agent's next model call raises ``M99RunStopped`` out of ``kickoff()`` / ``kickoff_async()``.

Why not registered tool hooks: CrewAI emits a ``HookDispatchedEvent`` (a pydantic event through its
event bus) after every tool-hook dispatch that finds a hook, which cost more than the Guard check
itself on every allowed tool call.  ``install()`` instead wraps ``crewai.hooks.tool_hooks.dispatch``,
the one function both tool paths (native function calling and ReAct) reach through
``run_before_tool_call_hooks`` / ``run_after_tool_call_hooks``: M99 runs first among the
before-hooks and last among the after-hooks, with the hook semantics unchanged (a refusal is a
``HookAborted``: "blocked by hook", the tool never runs).
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

with warnings.catch_warnings():
    # crewai's import emits an ImportWarning (crewai.rag); under -W error it would stop the adapter.
    warnings.simplefilter("ignore", ImportWarning)
    import crewai  # noqa: F401
from crewai import hooks as _hooks
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMCallFailedEvent
from crewai.hooks import LLMCallHookContext, ToolCallHookContext
from crewai.hooks import tool_hooks as _tool_hooks
from crewai.hooks.dispatch import InterceptionPoint
from crewai.tools.agent_tools.base_agent_tools import BaseAgentTool

from m99.errors import M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused

from ._common import (
    GuardResolver,
    Guards,
    GuardSource,
    allows_messages,
    check_model,
    check_tool,
    governing,
    idle,
    model_limits,
    note_started,
    note_task,
    observing,
    record_model,
    record_tool,
    redact,
    redacting,
    reset_streaks,
)
from ._credentials import ModelKeys
from ._crewai_stop import M99RunStopped, M99ToolBlocked
from ._crewai_stop import put_in as _stop_cleanly
from ._patch import Adapter, Installation

__all__ = ["M99RunStopped", "M99ToolBlocked", "adapter", "install", "installed", "keys", "refusal_text", "uninstall"]

logger = logging.getLogger("m99.adapters.crewai")

SUPPORTED = {"crewai": ">=1.15,<2"}


def _role(agent: Any) -> str | None:
    role = getattr(agent, "role", None)
    return role if isinstance(role, str) and role else None


def refusal_text(exc: M99KillSwitchTriggered) -> str:
    return f"{exc} The tool did not run; do not call it again."


class _CrewInstall(Installation):
    def __init__(self, adapter: str, resolver: GuardResolver) -> None:
        super().__init__(adapter, resolver)
        # Refusals waiting for the after-tool hook of the same call (keyed by the tool_input dict,
        # which CrewAI passes to both hooks), so the agent reads M99's reason, not "blocked by hook".
        self.pending: OrderedDict[int, str] = OrderedDict()
        # Model calls not reported yet: LLM id -> (Guards, its token total when the call started).
        # CrewAI runs after-LLM hooks only for text answers, so a tool-call answer is reported at
        # the next model call instead.
        self.calls: dict[int, tuple[Guards, int]] = {}
        self.lock = threading.Lock()

    def remember_refusal(self, key: int, text: str) -> None:
        with self.lock:
            self.pending[key] = text
            while len(self.pending) > 256:
                self.pending.popitem(last=False)

    def take_refusal(self, key: int) -> str | None:
        with self.lock:
            return self.pending.pop(key, None)


keys = ModelKeys()


# -- the tool hooks, run by the dispatcher wrapper --------------------------------------------------------


def _before_tool_call(state: _CrewInstall, ctx: ToolCallHookContext) -> None:
    tool = str(ctx.tool_name)
    agent = ctx.agent
    _heal_executor(agent)
    try:
        guards = governing(state.resolve, _role(agent), tool=tool)
        if idle(guards) and "coworker" not in ctx.tool_input:
            note_started(guards, tool, ctx.tool_input)  # for the side-effect ledger
            return None  # the usual case, and the cheapest (a coworker may have a Guard of its own)
        check_tool(guards, tool, ctx.tool_input)
        # Without a coworker named and with messages allowed, the check cannot refuse: skip the
        # (pydantic private attribute) lookup that tells a delegation on every other call.
        if ("coworker" in ctx.tool_input or not allows_messages(guards)) and _is_delegation(ctx):
            _check_messages(state, guards, ctx, tool)
        if redacting(guards):  # CrewAI only sees in-place changes to tool_input
            for key, value in list(ctx.tool_input.items()):
                clean = redact(guards, value)
                if clean is not value:
                    ctx.tool_input[key] = clean
    except ToolCallRefused as exc:
        state.remember_refusal(id(ctx.tool_input), refusal_text(exc))
        raise M99ToolBlocked(exc) from None
    except Exception as exc:
        # Anything but HookAborted is swallowed by CrewAI and the tool runs: fail closed instead.
        refused = ToolCallRefused(
            f"M99: tool {tool!r} refused: the M99 hook failed ({exc!r}); failing closed", tool=tool
        )
        state.remember_refusal(id(ctx.tool_input), refusal_text(refused))
        raise M99ToolBlocked(refused) from exc
    return None


def _is_delegation(ctx: ToolCallHookContext) -> bool:
    """CrewAI's "Delegate work to coworker" / "Ask question to coworker" tools."""
    return isinstance(getattr(ctx.tool, "_original_tool", None), BaseAgentTool)


def _check_messages(state: _CrewInstall, guards: Guards, ctx: ToolCallHookContext, tool: str) -> None:
    """At L2 delegation is agent-to-agent messaging: refused for the sender and for the coworker."""
    coworker = ctx.tool_input.get("coworker")
    receivers = governing(state.resolve, coworker, tool=tool) if isinstance(coworker, str) else ()
    for guard in (*guards, *receivers):
        if not allows_messages((guard,)):
            raise ToolCallRefused(
                f"M99: {tool!r} refused for agent {guard.name!r}: L2 SaaS disconnection, "
                "agent-to-agent messages are cut",
                tool=tool,
                level=max(2, guard.level),
                reason=guard.reason,
                agent=guard.name,
            )


def _after_tool_call(state: _CrewInstall, ctx: ToolCallHookContext) -> str | None:
    if state.pending:  # a refusal of this call was stored by the before-hook
        refusal = state.take_refusal(id(ctx.tool_input))
        if refusal is not None:
            return refusal
    guards = observing(state.resolve, _role(ctx.agent))
    if not guards:
        return None
    raw = ctx.raw_tool_result
    failed = isinstance(raw, str) and raw.startswith(("Error executing tool", "Tool execution blocked"))
    record_tool(guards, str(ctx.tool_name), ok=not failed, result=raw)
    if not redacting(guards):
        return None
    result = ctx.tool_result
    try:
        clean = redact(guards, result)
    except Exception:
        logger.exception("m99: redaction failed; withholding the tool output")
        return "[REDACTED:m99] (the tool output was withheld: redaction failed)"
    return clean if clean is not result else None


# -- the LLM hooks: module-level functions, so executors that snapshotted them stay consistent ------------


def _before_llm_call(ctx: LLMCallHookContext) -> None:
    state = adapter.current
    if state is None:
        return None
    role = _role(ctx.agent)
    try:
        if getattr(ctx, "iterations", 0) == 0:
            # A new executor loop: a refusal streak from an earlier run must not stop this one.
            started = observing(state.resolve, role)
            reset_streaks(started)
            note_task(started, getattr(ctx.task, "description", None))
        _report_call(state, ctx.llm)
        guards = governing(state.resolve, role)
        check_model(guards, *model_limits(ctx.llm))
        if guards:
            keys.protect(guards, ctx.llm, label=_llm_label(ctx.llm))
            _redact_messages(guards, ctx.messages)
            with state.lock:
                state.calls[id(ctx.llm)] = (guards, _token_total(ctx.llm))
    except M99KillSwitchTriggered as exc:
        raise M99RunStopped(exc) from None
    except Exception as exc:
        raise M99RunStopped(
            ModelCallRefused(f"M99: model call refused: the M99 hook failed ({exc!r}); failing closed")
        ) from exc
    return None


def _after_llm_call(ctx: LLMCallHookContext) -> None:
    state = adapter.current
    if state is not None:
        _report_call(state, ctx.llm)
    return None


def _on_llm_failed(source: Any, event: Any) -> None:
    state = adapter.current
    if state is not None:
        role = getattr(event, "agent_role", None)
        record_model(observing(state.resolve, role if isinstance(role, str) else None), ok=False)


def _token_total(llm: Any) -> int:
    """CrewAI counts tokens per LLM instance, cumulatively."""
    try:
        return int(llm.get_token_usage_summary().total_tokens)
    except Exception:
        return 0


def _report_call(state: _CrewInstall, llm: Any) -> None:
    with state.lock:
        pending = state.calls.pop(id(llm), None)
    if pending is not None:
        guards, start = pending
        record_model(guards, tokens=max(0, _token_total(llm) - start), ok=True)


def _redact_messages(guards: Guards, messages: Any) -> None:
    # In place: the hook context shares the executor's history, and CrewAI ignores a new list.
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        for key, value in list(message.items()):  # content, and the model's own tool_calls
            clean = redact(guards, value)
            if clean is not value:
                message[key] = clean


def _llm_label(llm: Any) -> str:
    return f"crewai:{getattr(llm, 'model', type(llm).__name__)}"


def _heal_executor(agent: Any) -> None:
    """Give an executor built before ``install()`` the LLM hooks it snapshotted without."""
    try:
        executor = getattr(agent, "agent_executor", None)
        if executor is None or _before_llm_call in getattr(executor, "before_llm_call_hooks", ()):
            return  # the usual case: built after install(), or healed at an earlier tool call
        for attr, hook in _LLM_HOOKS:
            hooks = getattr(executor, attr, None)
            if type(hooks) is list and hook not in hooks:
                hooks.append(hook)
    except Exception:
        logger.exception("m99: could not add the LLM hooks to an existing executor")


_LLM_HOOKS = (("before_llm_call_hooks", _before_llm_call), ("after_llm_call_hooks", _after_llm_call))


# -- the tool-hook dispatcher -----------------------------------------------------------------------------

_PRE_TOOL = InterceptionPoint.PRE_TOOL_CALL
_POST_TOOL = InterceptionPoint.POST_TOOL_CALL


def _dispatch_default(name: str, fallback: Any) -> Any:
    """The default CrewAI's dispatcher gives keyword ``name``, so ours passes on the same one."""
    try:
        default = inspect.signature(_tool_hooks.dispatch).parameters[name].default  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError):
        return fallback
    return fallback if default is inspect.Parameter.empty else default


_REDUCER_DEFAULT = _dispatch_default("reducer", None)
_VERBOSE_DEFAULT = _dispatch_default("verbose", True)


def _dispatcher(state: _CrewInstall) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def dispatch(
            point: Any, ctx: Any, *, reducer: Any = _REDUCER_DEFAULT, verbose: Any = _VERBOSE_DEFAULT, **more: Any
        ) -> Any:
            """``crewai.hooks.tool_hooks.dispatch`` with M99 first among the before-tool hooks and last
            among the after-tool hooks; other hooks (and other points) run exactly as CrewAI runs them.

            CrewAI's keywords are spelled out (forwarding ``*args, **kwargs`` cost 150-300 ns a call,
            twice per tool call); any keyword a later CrewAI adds still reaches it through ``more``.
            """
            if not state.live or (point is not _PRE_TOOL and point is not _POST_TOOL):
                return previous(point, ctx, reducer=reducer, verbose=verbose, **more)
            if point is _PRE_TOOL:
                # M99ToolBlocked is a HookAborted: run_before_tool_call_hooks reports the call blocked
                # and the tool never runs; no other before-hook runs for a refused call.
                _before_tool_call(state, ctx)
            try:
                if more:  # a keyword a later CrewAI added (unpacking an empty ``more`` costs ~90 ns)
                    return previous(point, ctx, reducer=reducer, verbose=verbose, **more)
                return previous(point, ctx, reducer=reducer, verbose=verbose)
            finally:
                if point is _POST_TOOL:  # last, so no other after-hook can put back what M99 replaced
                    _finish_tool_call(state, ctx)

        return dispatch

    return factory


def _finish_tool_call(state: _CrewInstall, ctx: Any) -> None:
    try:
        result = _after_tool_call(state, ctx)
    except Exception:
        logger.exception("m99: the after-tool check failed; withholding the tool output")
        result = "[REDACTED:m99] (the tool output was withheld: the M99 check failed)"
    if isinstance(result, str):  # CrewAI's after_tool_call_reducer semantics
        ctx.tool_result = result


# -- install / uninstall ---------------------------------------------------------------------------------


def _put_in(state: _CrewInstall) -> None:
    state.wrap(_tool_hooks, "dispatch", _dispatcher(state))
    _hooks.register_before_llm_call_hook(_before_llm_call)
    state.add(lambda: _hooks.unregister_before_llm_call_hook(_before_llm_call))
    _hooks.register_after_llm_call_hook(_after_llm_call)
    state.add(lambda: _hooks.unregister_after_llm_call_hook(_after_llm_call))
    crewai_event_bus.register_handler(LLMCallFailedEvent, _on_llm_failed)
    state.add(lambda: crewai_event_bus.off(LLMCallFailedEvent, _on_llm_failed))
    _stop_cleanly(state)  # a stopped run ends with M99's one-line error, not CrewAI's noise


adapter = Adapter("crewai", _CrewInstall, _put_in, supported=SUPPORTED)


def install(guard_resolver: GuardSource = None) -> None:
    """Put M99 in CrewAI's tool path and register its LLM hooks process-wide; idempotent (again:
    only the resolver changes).

    Install before the first ``kickoff``: CrewAI copies the LLM-hook list into each agent executor
    when it is built (an older executor gets the hooks at its next tool call).
    """
    adapter.install(guard_resolver)


def uninstall() -> None:
    """Undo exactly what ``install`` did; idempotent.  Executors that copied the LLM hooks find them
    inert, and so is the dispatcher wrapper if someone wrapped it after us."""
    adapter.uninstall()


def installed() -> bool:
    return adapter.installed()
