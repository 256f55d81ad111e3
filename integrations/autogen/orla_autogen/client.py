"""The AutoGen model client whose calls orla serves: ``OrlaChatCompletionClient``, and
``autogen_client()`` to build agents with before their team is served.

Calls go through the session's runtime: the agent's mapped backend, its queue at the
agent's priority, the run's slot, a ``CallRecord``. Tools pass through to the agent, who
runs them; where the backend cannot call tools natively, they are emulated through a JSON
schema (see ``orla_autogen.emulation``).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, cast

from autogen_core import CancellationToken, MessageHandlerContext
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from orla_autogen.emulation import emulated_answer, emulated_request
from orla_autogen.messages import (
    Call,
    Sink,
    chat_messages,
    chat_request,
    native_result,
    output_schema,
    text_of,
    tool_schema,
)
from orla_autogen.runs import TeamRuns
from orla_sdk import OrlaError
from orla_sdk.runtime import StageContext, call_model, stage_target

DEFAULT_CONTEXT_WINDOW = 4096  # the embedded engine's context per slot
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text
TOKENS_PER_MESSAGE = 4  # a chat template's role markers around each message
NO_ARGS: Mapping[str, Any] = MappingProxyType({})
# request fields orla writes itself: an agent's create arguments may not set them
RESERVED_ARGS = frozenset({"model", "messages", "tools", "tool_choice", "stream",
                           "stream_options", "response_format"})
ToolChoice = Tool | Literal["auto", "required", "none"]


def autogen_client(model: str | None = None, **create_args: Any) -> OrlaChatCompletionClient:
    """A model client to build AutoGen agents with before ``orla.serve(team)`` serves the
    team. ``model`` is the agent's logical model (``models=`` in ``orla.serve`` wins);
    ``create_args`` (``max_tokens=128``, ``temperature=0``) go with each of its calls."""
    return OrlaChatCompletionClient(model=model, create_args=create_args)


class OrlaChatCompletionClient(ChatCompletionClient):
    """An AutoGen model client whose calls orla's runtime serves, attributed to the agent
    that makes them. ``serve_team`` makes one per agent; ``autogen_client()`` makes an
    unbound one to build agents with."""

    def __init__(self, runs: TeamRuns | None = None, *, agent: str | None = None,
                 model: str | None = None, create_args: Mapping[str, Any] | None = None,
                 context_window: int = DEFAULT_CONTEXT_WINDOW) -> None:
        self.runs = runs
        self.agent = agent
        self.model = model
        self.create_args = checked_args(create_args or {})
        self.context_window = context_window
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)

    # ---- calls --------------------------------------------------------------------------
    async def create(self, messages: Sequence[LLMMessage], *,
                     tools: Sequence[Tool | ToolSchema] = (),
                     tool_choice: ToolChoice = "auto",
                     json_output: bool | type[BaseModel] | None = None,
                     extra_create_args: Mapping[str, Any] = NO_ARGS,
                     cancellation_token: CancellationToken | None = None) -> CreateResult:
        call = self._call(messages, tools, tool_choice, json_output, extra_create_args)
        return await self._serve(call, None, cancellation_token)

    async def create_stream(self, messages: Sequence[LLMMessage], *,
                            tools: Sequence[Tool | ToolSchema] = (),
                            tool_choice: ToolChoice = "auto",
                            json_output: bool | type[BaseModel] | None = None,
                            extra_create_args: Mapping[str, Any] = NO_ARGS,
                            cancellation_token: CancellationToken | None = None,
                            ) -> AsyncGenerator[str | CreateResult, None]:
        """The reply's text as the engine streams it, then the ``CreateResult``."""
        call = self._call(messages, tools, tool_choice, json_output, extra_create_args)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def put(piece: str | None) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        async def serve() -> CreateResult:
            try:
                return await self._serve(call, put, cancellation_token)
            finally:
                put(None)

        task = asyncio.ensure_future(serve())
        streamed = False
        try:
            while (piece := await pieces.get()) is not None:
                if piece:  # an empty piece carries a reasoning model's thinking
                    streamed = True
                    yield piece
            result = await task
        finally:
            task.cancel()
        if not streamed and isinstance(result.content, str) and result.content:
            yield result.content  # the engine did not stream it (an emulated tool answer)
        yield result

    def _call(self, messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema],
              tool_choice: ToolChoice, json_output: bool | type[BaseModel] | None,
              extra: Mapping[str, Any]) -> Call:
        schemas = [tool_schema(t) for t in tools]
        choice = tool_choice if isinstance(tool_choice, str) else tool_choice.schema["name"]
        schema, name = output_schema(json_output)
        params = {**self.create_args, **checked_args(extra)}
        return Call(self._caller(), messages, schemas, choice, schema, name, params)

    def _caller(self) -> str:
        try:
            agent = MessageHandlerContext.agent_id()
        except RuntimeError:  # not inside an agent's message handler
            return self.agent or "agent"
        return self._bound().name_of(agent)

    def _bound(self) -> TeamRuns:
        if self.runs is None:
            raise OrlaError("this model client from orla_autogen.autogen_client() is not "
                            "served yet: serve the team its agents belong to with "
                            "orla.serve(team, ...) and run the served team.")
        return self.runs

    async def _serve(self, call: Call, sink: Sink | None,
                     token: CancellationToken | None) -> CreateResult:
        runs = self._bound()
        await runs.start()
        ctx, run_id, own = runs.unit(call.agent)
        served = asyncio.ensure_future(runs.session.acall(answer(ctx, call, sink)))
        if token is not None:
            token.link_future(served)
        try:
            result = await served
        except OrlaError as exc:
            runs.failed(exc)
            raise
        finally:
            if own:
                await runs.close_own_run(run_id)
        self._usage = RequestUsage(self._usage.prompt_tokens + result.usage.prompt_tokens,
                                   self._usage.completion_tokens + result.usage.completion_tokens)
        return result

    # ---- what AutoGen asks of a client --------------------------------------------------
    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(vision=False, function_calling=self._can_call_tools(),
                         json_output=True, family=ModelFamily.UNKNOWN,
                         structured_output=True, multiple_system_messages=True)

    @property
    def capabilities(self) -> ModelCapabilities:
        info = self.model_info
        return cast(ModelCapabilities, {
            "vision": info["vision"], "function_calling": info["function_calling"],
            "json_output": info["json_output"]})

    def _can_call_tools(self) -> bool:
        """Natively, or emulated through JSON-schema output; an unbound client says yes
        (serving a team checks its agents' backends)."""
        if self.runs is None:
            return True
        plan = self.runs.session.plan
        backends = [plan.backend(t.backend) for t in self.runs.targets_of(self.agent)]
        return all(b is not None and (b.capabilities.tool_calling or b.capabilities.json_schema)
                   for b in backends)

    def actual_usage(self) -> RequestUsage:
        return self._usage

    def total_usage(self) -> RequestUsage:
        return self._usage  # orla never answers from a response cache: both are the same

    def count_tokens(self, messages: Sequence[LLMMessage], *,
                     tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """An estimate: a token for every ``CHARS_PER_TOKEN`` characters of the messages'
        text and the tools' JSON schemas, and ``TOKENS_PER_MESSAGE`` for each message. The
        engine's own count comes back in each result's usage."""
        chars = sum(len(text_of(m)) for m in messages)
        chars += sum(len(json.dumps(tool_schema(t))) for t in tools)
        return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *,
                         tools: Sequence[Tool | ToolSchema] = ()) -> int:
        return max(0, self.context_window - self.count_tokens(messages, tools=tools))

    async def close(self) -> None:
        """Nothing to close: the served team's session owns the engines."""


# ---- serving one call (on the session's loop) ------------------------------------------
async def answer(ctx: StageContext, call: Call, sink: Sink | None) -> CreateResult:
    """The call on the agent's backend: routed, queued, recorded, read back."""
    target = await stage_target(ctx, chat_messages(call.messages, native_tools=True))
    live = ctx.run.pool[target.backend]
    capabilities = live.spec.capabilities
    emulate = bool(call.offered) and not capabilities.tool_calling
    if (call.schema is not None or emulate) and not capabilities.json_schema:
        raise OrlaError(f"agent {call.agent!r}: backend {target.backend!r} cannot constrain "
                        "output to a JSON schema, which "
                        f"{'tool calls' if emulate else 'json_output'} need here; map the "
                        "agent to a backend that can (models={...}).")
    if emulate:
        request = emulated_request(call, target, ctx.priority, stream=sink is not None)
        return await emulated_answer(ctx, target, call, request)
    request = chat_request(call, target, ctx.priority, capabilities.tool_calling, sink)
    return native_result(await call_model(ctx, live, target, request))


def checked_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """An agent's create arguments, refused where they name what orla sets itself."""
    reserved = sorted(RESERVED_ARGS & set(args))
    if reserved:
        raise ValueError(f"create arguments {reserved} are orla's to set: the model comes from "
                         "the plan's mapping, the rest from create()'s own parameters.")
    return dict(args)
