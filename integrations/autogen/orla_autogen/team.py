"""``orla.serve(team)``: orla as the serving layer beneath an AutoGen AgentChat team.

    team = SelectorGroupChat([triage, writer], model_client=autogen_client(),
                             termination_condition=MaxMessageTermination(4))
    served = orla.serve(team, backends=[...], mapping={"light": ..., "heavy": ...},
                        models={"writer": "heavy"}, selector_model="light")
    result = await served.run(task="My card was charged twice.")
    served.report.to_json()["by_agent"]

How it fits together:

- The team becomes an orla plan: one stage node per agent that has a model client and one
  for the team's manager when it has one (the selector of a ``SelectorGroupChat``, named
  ``"selector"``), with a branch node for the choice of the next speaker and loop edges
  back to it. The passes map each agent to its backend and model (``models=`` by agent
  name, else the model its ``autogen_client(model=...)`` names, else ``default_model``),
  give the selector ``selector_priority`` (90 unless told) and decide cache spans. Agents
  without a model client (a ``UserProxyAgent``) make no calls for orla to serve and are
  left out of the plan; agents of nested teams are served as units the plan has no node for.
- ``serve_team`` puts an ``OrlaChatCompletionClient`` in place of every model client it
  finds (``AssistantAgent`` and the selector keep theirs in ``_model_client``), so no agent
  is rebuilt and any client the team was built with works: ``autogen_client()`` is a
  placeholder for teams built to be served. The team object is changed in place; serve it
  before its first run (a manager made by a run keeps the client it was made with).
- A call learns who makes it from ``MessageHandlerContext.agent_id()``: in a group chat
  each participant's container and the manager are agents whose type is
  ``"<name>_<team id>"`` and whose key is the team id, which maps back to the agent's
  name. Outside a message handler the client's own agent name stands in.
- A unit of work (a ``StageContext`` and a report row) is one agent turn: consecutive calls
  of the same agent within a run (a tool round and its reflection, the selector's retries).
  A turn is priced and traced as one span with a child per call, and a turn's calls share
  its priority and record.
- Each ``ServedTeam.run`` is one orla run: its calls share the run's cache slot, and the
  run is settled ``"over"`` when the team stops. A served agent used on its own, outside
  ``run``, makes each call a run of its own.
- Calls go through the session's runtime: the agent's mapped backend, its queue at the
  agent's priority, the run's slot, a ``CallRecord``. Tools pass through to the agent, who
  runs them; where an engine cannot call tools natively (llama.cpp with SmolLM2) the reply
  is constrained to a JSON schema that holds either a tool call or the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NoReturn, cast

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import BaseGroupChat
from autogen_core import AgentId, CancellationToken, FunctionCall, MessageHandlerContext
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FinishReasons,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

import orla_sdk as orla
from orla_sdk import BackendPool, OrlaError, Price, Report
from orla_sdk.backends import ChatRequest, ChatResult
from orla_sdk.serving import ServingSession
from orla_sdk.ir import (
    BackendSpec,
    BranchTest,
    Condition,
    Node,
    Param,
    Plan,
    StageSpec,
    Target,
    TypeSpec,
)
from orla_sdk.passes import Pass
from orla_sdk.runtime import (
    StageContext,
    call_model,
    close_cut_json,
    emulated_tools_schema,
    stage_target,
)

NOT_RUNNABLE_REF = "orla_autogen.team:not_runnable"
INPUT_ID = "input:task"
SELECTOR_PRIORITY = 90
MANAGER_NAMES = {"SelectorGroupChat": "selector", "MagenticOneGroupChat": "orchestrator"}
DEFAULT_CONTEXT_WINDOW = 4096  # the embedded engine's context per slot
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text
TOKENS_PER_MESSAGE = 4  # a chat template's role markers around each message
NO_ARGS: Mapping[str, Any] = MappingProxyType({})
# request fields orla writes itself: an agent's create arguments may not set them
RESERVED_ARGS = frozenset({"model", "messages", "tools", "tool_choice", "stream",
                           "stream_options", "response_format"})
ToolChoice = Tool | Literal["auto", "required", "none"]
Sink = Callable[[str | None], None]  # streamed text, then None when the call is over


def not_runnable(*inputs: Any) -> NoReturn:
    """The body of every stage of a plan drawn from an AutoGen team."""
    raise OrlaError("this plan was made by orla.serve from an AutoGen team: it records the "
                    "team's agents for passes and diagrams and cannot be run by orla.run; run "
                    "the served team itself (await served.run(task=...)).")


def autogen_client(model: str | None = None, **create_args: Any) -> OrlaChatCompletionClient:
    """A model client to build AutoGen agents with before ``orla.serve(team)`` serves the
    team. ``model`` is the agent's logical model (``models=`` in ``orla.serve`` wins);
    ``create_args`` (``max_tokens=128``, ``temperature=0``) go with each of its calls."""
    return OrlaChatCompletionClient(model=model, create_args=create_args)


# ---- the runs of a served team ------------------------------------------------------------
class TeamRuns:
    """What a served team's clients share: the session, the run in progress, whose turn it
    is, and the agent names behind AutoGen's agent types."""

    def __init__(self, session: ServingSession, team: str, names: Mapping[str, str],
                 nodes: Mapping[str, str]) -> None:
        self.session = session
        self.team = team
        self.names = dict(names)  # agent type -> agent name
        self.nodes = dict(nodes)  # agent name -> plan node id
        self.run_id: str | None = None
        self._turn = 0
        self._speaker: str | None = None
        self._failures: list[OrlaError] = []
        self._lock = threading.Lock()

    async def start(self) -> None:
        if not self.session.pool.started:
            await asyncio.to_thread(self.session.start)  # may start an embedded engine

    def begin(self) -> str:
        with self._lock:
            if self.run_id is not None:
                raise OrlaError(f"team {self.team!r} is already running; a team runs one task "
                                "at a time (serve another team for concurrent runs).")
            self.run_id = f"{self.team}:{uuid.uuid4().hex[:12]}"
            self._turn, self._speaker, self._failures = 0, None, []
            return self.run_id

    def end(self) -> OrlaError | None:
        """The run is over; returns the first orla error its calls raised, if any."""
        with self._lock:
            self.run_id = None
            return self._failures[0] if self._failures else None

    def failed(self, error: OrlaError) -> None:
        with self._lock:
            self._failures.append(error)

    def name_of(self, agent: AgentId) -> str:
        """An agent's name from its AgentChat id (type ``"<name>_<team id>"``, key the id)."""
        return self.names.get(agent.type) or agent.type.removesuffix(f"_{agent.key}")

    def unit(self, agent: str) -> tuple[StageContext, str, bool]:
        """The turn a call of ``agent`` belongs to: its context, its run, and whether that
        run is the call's own (made outside ``ServedTeam.run``)."""
        with self._lock:
            run_id, own = self.run_id, self.run_id is None
            if run_id is None:
                run_id = f"{self.team}:{uuid.uuid4().hex[:12]}"
            if agent != self._speaker or own:
                self._turn, self._speaker = self._turn + 1, agent
            turn = self._turn
        labels = {"team": self.team, "agent": agent, "run": run_id, "turn": turn}
        node_id = self.nodes.get(agent, f"agent:{agent}")
        return self.session.unit(run_id, f"{turn}:{agent}", node_id, labels), run_id, own

    async def close_own_run(self, run_id: str) -> None:
        self.session.finish_units(run_id)
        await self.session.acall(self.session.settle(run_id, "over"))

    def targets_of(self, agent: str | None) -> list[Target]:
        """The targets an agent's calls may go to (every target when the agent is unknown)."""
        plan = self.session.plan
        node_id = self.nodes.get(agent or "")
        if node_id is None:
            return [t for name in plan.mapping for t in plan.targets_of(name)]
        name = plan.logical_model(plan.node(node_id))
        return plan.targets_of(name) if name else []


# ---- the model client ---------------------------------------------------------------------
@dataclass
class _Call:
    """One ``create``: AutoGen's arguments, read and checked."""

    agent: str
    messages: Sequence[LLMMessage]
    tools: list[ToolSchema]
    tool_choice: str  # "auto", "required", "none", or the one tool's name
    schema: dict[str, Any] | None
    schema_name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def offered(self) -> list[ToolSchema]:
        if self.tool_choice == "none":
            return []
        if self.tool_choice in ("auto", "required"):
            return self.tools
        return [t for t in self.tools if t["name"] == self.tool_choice]

    @property
    def must_call(self) -> bool:
        return bool(self.offered) and self.tool_choice != "auto"


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
        self.create_args = _checked_args(create_args or {})
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
              extra: Mapping[str, Any]) -> _Call:
        schemas = [_tool_schema(t) for t in tools]
        choice = tool_choice if isinstance(tool_choice, str) else tool_choice.schema["name"]
        schema, name = _output_schema(json_output)
        params = {**self.create_args, **_checked_args(extra)}
        return _Call(self._caller(), messages, schemas, choice, schema, name, params)

    def _caller(self) -> str:
        try:
            agent = MessageHandlerContext.agent_id()
        except RuntimeError:  # not inside an agent's message handler
            return self.agent or "agent"
        return self._bound().name_of(agent)

    def _bound(self) -> TeamRuns:
        if self.runs is None:
            raise OrlaError("this model client from orla.autogen_client() is not served yet: "
                            "serve the team its agents belong to with orla.serve(team, ...) "
                            "and run the served team.")
        return self.runs

    async def _serve(self, call: _Call, sink: Sink | None,
                     token: CancellationToken | None) -> CreateResult:
        runs = self._bound()
        await runs.start()
        ctx, run_id, own = runs.unit(call.agent)
        served = asyncio.ensure_future(runs.session.acall(_answer(ctx, call, sink)))
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
        chars = sum(len(_text_of(m)) for m in messages)
        chars += sum(len(json.dumps(_tool_schema(t))) for t in tools)
        return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *,
                         tools: Sequence[Tool | ToolSchema] = ()) -> int:
        return max(0, self.context_window - self.count_tokens(messages, tools=tools))

    async def close(self) -> None:
        """Nothing to close: the served team's session owns the engines."""


# ---- serving one call (on the session's loop) ------------------------------------------
async def _answer(ctx: StageContext, call: _Call, sink: Sink | None) -> CreateResult:
    """The call on the agent's backend: routed, queued, recorded, read back."""
    target = await stage_target(ctx, _messages(call.messages, native_tools=True))
    live = ctx.run.pool[target.backend]
    capabilities = live.spec.capabilities
    emulate = bool(call.offered) and not capabilities.tool_calling
    if (call.schema is not None or emulate) and not capabilities.json_schema:
        raise OrlaError(f"agent {call.agent!r}: backend {target.backend!r} cannot constrain "
                        "output to a JSON schema, which "
                        f"{'tool calls' if emulate else 'json_output'} need here; map the "
                        "agent to a backend that can (models={...}).")
    request = _request(ctx, target, call, capabilities.tool_calling,
                       None if emulate else sink)  # emulated answers are JSON: not streamed
    result = await call_model(ctx, live, target, request)
    return _emulated_result(result, call) if emulate else _native_result(result)


def _request(ctx: StageContext, target: Target, call: _Call, native: bool,
             sink: Sink | None) -> ChatRequest:
    """The engine's request; without ``native`` tool calling, tools are offered through
    the answer's JSON schema and earlier tool rounds are written as that schema has them."""
    params = {**target.params, **call.params}
    schema, tools = call.schema, [_openai_tool(t) for t in call.offered]
    if call.offered and not native:
        offered = [(t["name"], dict(t.get("parameters") or {"type": "object"}))
                   for t in call.offered]
        schema, tools = emulated_tools_schema(offered, schema, not call.must_call), []
    elif call.must_call:
        params["tool_choice"] = ("required" if call.tool_choice == "required" else
                                 {"type": "function", "function": {"name": call.tool_choice}})
    return ChatRequest(model=target.model, messages=_messages(call.messages, native),
                       params=params, json_schema=schema, schema_name=call.schema_name,
                       tools=tools, priority=ctx.priority, on_token=sink)


def _native_result(result: ChatResult) -> CreateResult:
    usage = RequestUsage(result.prompt_tokens, result.completion_tokens)
    if result.tool_calls:
        calls = [FunctionCall(id=c.id or f"call_{uuid.uuid4().hex[:12]}", arguments=c.arguments,
                              name=c.name) for c in result.tool_calls]
        return CreateResult(finish_reason="function_calls", content=calls, usage=usage,
                            cached=False, thought=result.content or None)
    return CreateResult(finish_reason=_finish_reason(result.finish_reason),
                        content=result.content, usage=usage, cached=False)


def _emulated_result(result: ChatResult, call: _Call) -> CreateResult:
    """The JSON reply of an emulated tool round: a tool call, or the answer as text."""
    usage = RequestUsage(result.prompt_tokens, result.completion_tokens)
    text = close_cut_json(result.content) if result.finish_reason == "length" else result.content
    try:
        reply = json.loads(text)
    except ValueError as exc:
        raise OrlaError(f"agent {call.agent!r}: the model's reply is not the JSON its schema "
                        f"asks for ({exc}): {result.content[:200]!r}") from exc
    if isinstance(reply, dict) and "tool" in reply:
        arguments = json.dumps(reply.get("arguments") or {})
        calls = [FunctionCall(id=f"call_{uuid.uuid4().hex[:12]}", arguments=arguments,
                              name=str(reply["tool"]))]
        return CreateResult(finish_reason="function_calls", content=calls, usage=usage,
                            cached=False)
    if not isinstance(reply, dict) or "answer" not in reply:
        raise OrlaError(f"agent {call.agent!r}: expected a JSON object with 'tool' or 'answer',"
                        f" got {result.content[:200]!r}")
    answer = reply["answer"]
    content = answer if isinstance(answer, str) and call.schema is None else json.dumps(answer)
    return CreateResult(finish_reason=_finish_reason(result.finish_reason), content=content,
                        usage=usage, cached=False)


def _checked_args(args: Mapping[str, Any]) -> dict[str, Any]:
    reserved = sorted(RESERVED_ARGS & set(args))
    if reserved:
        raise ValueError(f"create arguments {reserved} are orla's to set: the model comes from "
                         "the plan's mapping, the rest from create()'s own parameters.")
    return dict(args)


def _finish_reason(reason: str) -> FinishReasons:
    known: dict[str, FinishReasons] = {
        "stop": "stop", "length": "length", "tool_calls": "function_calls",
        "function_call": "function_calls", "content_filter": "content_filter"}
    return known.get(reason, "stop" if not reason else "unknown")


# ---- AutoGen's messages and tools as OpenAI's ---------------------------------------------
def _messages(messages: Sequence[LLMMessage], native_tools: bool) -> list[dict[str, Any]]:
    """Chat-completions messages. Without native tools, tool calls are written as the JSON
    the emulation schema asks for, and their results as user messages."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        converted.extend(_message(message, native_tools))
    return converted


def _message(message: LLMMessage, native_tools: bool) -> list[dict[str, Any]]:
    if isinstance(message, SystemMessage):
        return [{"role": "system", "content": message.content}]
    if isinstance(message, UserMessage):
        return [{"role": "user", "content": _user_text(message)}]
    if isinstance(message, AssistantMessage):
        return [_assistant(message, native_tools)]
    if native_tools:
        return [{"role": "tool", "tool_call_id": r.call_id, "content": r.content}
                for r in message.content]
    return [{"role": "user", "content": "\n".join(f"Result of {r.name}: {r.content}"
                                                  for r in message.content)}]


def _user_text(message: UserMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    if any(not isinstance(part, str) for part in message.content):
        raise OrlaError(f"a message from {message.source!r} holds an image; the models orla "
                        "serves here read text only (the client's model_info says vision=False).")
    return "\n".join(cast(list[str], message.content))


def _assistant(message: AssistantMessage, native_tools: bool) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    if native_tools:
        return {"role": "assistant", "content": message.thought, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in message.content]}
    return {"role": "assistant", "content": "\n".join(
        json.dumps({"tool": c.name, "arguments": _json_or_text(c.arguments)})
        for c in message.content)}


def _text_of(message: LLMMessage) -> str:
    """A message's text, for estimates (image parts count as nothing)."""
    if isinstance(message, (SystemMessage, UserMessage)):
        content = message.content
        return content if isinstance(content, str) else " ".join(
            part for part in content if isinstance(part, str))
    if isinstance(message, AssistantMessage):
        if isinstance(message.content, str):
            return message.content
        return " ".join(f"{c.name} {c.arguments}" for c in message.content)
    return " ".join(r.content for r in message.content)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


def _tool_schema(tool: Tool | ToolSchema) -> ToolSchema:
    return tool.schema if isinstance(tool, Tool) else tool


def _openai_tool(schema: ToolSchema) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": schema["name"], "description": schema.get("description", ""),
        "parameters": schema.get("parameters") or {"type": "object", "properties": {}}}}


def _output_schema(json_output: bool | type[BaseModel] | None
                   ) -> tuple[dict[str, Any] | None, str]:
    if isinstance(json_output, type) and issubclass(json_output, BaseModel):
        return json_output.model_json_schema(), json_output.__name__
    if json_output:
        return {"type": "object"}, "output"
    return None, "output"


# ---- the served team ----------------------------------------------------------------------
TeamEvent = BaseAgentEvent | BaseChatMessage | TaskResult
Task = str | BaseChatMessage | Sequence[BaseChatMessage] | None


class ServedTeam:
    """An AutoGen team whose model calls orla serves; used like the team."""

    def __init__(self, team: BaseGroupChat, runs: TeamRuns, *, tracer: Any = None) -> None:
        self.team = team
        self.runs = runs
        self.tracer = tracer  # an OpenTelemetry Tracer: each run's spans go there
        self.cache_log: list[dict[str, Any]] = []

    @property
    def session(self) -> ServingSession:
        return self.runs.session

    @property
    def plan(self) -> Plan:
        return self.session.plan

    @property
    def report(self) -> Report:
        return self.session.report

    async def run(self, *, task: Task = None, cancellation_token: CancellationToken | None = None,
                  output_task_messages: bool = True) -> TaskResult:
        """One task, one orla run: the team's ``run``."""
        run_id = await self._begin()
        error: BaseException | None = None
        try:
            return await self.team.run(task=task, cancellation_token=cancellation_token,
                                       output_task_messages=output_task_messages)
        except Exception as exc:
            error = exc
            raise
        finally:
            await self._end(run_id, error)

    async def run_stream(self, *, task: Task = None,
                         cancellation_token: CancellationToken | None = None,
                         output_task_messages: bool = True) -> AsyncGenerator[TeamEvent, None]:
        """The team's ``run_stream``: its messages and events, then the ``TaskResult``."""
        run_id = await self._begin()
        error: BaseException | None = None
        events = self.team.run_stream(task=task, cancellation_token=cancellation_token,
                                      output_task_messages=output_task_messages)
        try:
            async with contextlib.aclosing(events):  # a caller that stops early stops the team
                async for event in events:
                    yield event
        except Exception as exc:
            error = exc
            raise
        finally:
            await self._end(run_id, error)

    async def reset(self) -> None:
        await self.team.reset()

    async def save_state(self) -> Mapping[str, Any]:
        return await self.team.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self.team.load_state(state)

    def close(self) -> None:
        """Stop the session: its engines and its loop (the team's clients start it again
        if the team runs after this)."""
        self.session.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.session.close)

    async def __aenter__(self) -> ServedTeam:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.team, name)

    async def _begin(self) -> str:
        await self.runs.start()
        return self.runs.begin()

    async def _end(self, run_id: str, error: BaseException | None) -> None:
        """Settle the run; an orla error behind the team's failure is raised as itself
        (AgentChat reports an agent's exception as a ``RuntimeError`` holding its text)."""
        failure = self.runs.end()
        self.session.finish_units(run_id)
        entries = await self.session.acall(self.session.settle(run_id, "over"))
        self.cache_log += [{**entry, "run": run_id} for entry in entries]
        if self.tracer is not None:
            self.report.export_spans(self.tracer, run=run_id)
        if error is not None and failure is not None and failure is not error:
            raise failure from error


# ---- building the served team -------------------------------------------------------------
@dataclass(frozen=True)
class _Seat:
    """Where a team keeps a model client: its owner, the agent name its calls carry, and
    the plan node it is drawn as (None for agents of nested teams)."""

    owner: Any
    agent: str
    client: ChatCompletionClient
    node: str | None


def serve_team(team: Any, *, backends: Sequence[BackendSpec] | None = None,
               mapping: Mapping[str, Any] | None = None, models: Mapping[str, str] | None = None,
               default_model: str | None = None, prices: Mapping[str, Price] | None = None,
               tracer: Any = None, pool: BackendPool | None = None, name: str | None = None,
               passes: Sequence[Pass] | None = None,
               selector_model: str | None = None,
               selector_priority: int = SELECTOR_PRIORITY) -> ServedTeam:
    """An AgentChat team (``SelectorGroupChat``, ``RoundRobinGroupChat``, ...) served by
    orla; see the module's docstring. ``selector_model`` is the logical model of the
    manager's calls (the selector's), ``selector_priority`` their queue priority."""
    if not isinstance(team, BaseGroupChat):
        raise TypeError(f"orla.serve takes an AutoGen AgentChat team (SelectorGroupChat, "
                        f"RoundRobinGroupChat, ...), not {type(team).__name__}.")
    if team._initialized:
        raise OrlaError(f"team {team.name!r} has run already, and its manager keeps the model "
                        "client it was made with; serve the team before its first run.")
    seats = _seats(team)
    manager = _manager_name(team)
    chosen = {**(models or {}), **({manager: selector_model} if selector_model else {})}
    plan = _team_plan(team, name or team.name, seats, chosen, selector_priority)
    plan = orla.compile(plan, backends=backends, mapping=mapping, default_model=default_model,
                        passes=passes)
    unit_models = {s.agent: m for s in seats if (m := _model_of(s, chosen)) is not None}
    session = ServingSession(plan, pool=pool, models=unit_models,
                             report=Report(prices, groups=("agent",)))
    nodes = {seat.agent: seat.node for seat in seats if seat.node is not None}
    runs = TeamRuns(session, plan.name, _agent_types(team), nodes)
    for seat in seats:
        seat.owner._model_client = OrlaChatCompletionClient(
            runs, agent=seat.agent, model=_model_of(seat, chosen),
            create_args=_create_args_of(seat.client))
    return ServedTeam(team, runs, tracer=tracer)


def _manager_name(team: BaseGroupChat) -> str:
    return MANAGER_NAMES.get(type(team).__name__, "manager")


def _seats(team: BaseGroupChat, nested: bool = False) -> list[_Seat]:
    """The model clients of a team, its participants and the teams nested in it."""
    seats: list[_Seat] = []
    client = getattr(team, "_model_client", None)
    if isinstance(client, ChatCompletionClient):
        manager = _manager_name(team)
        seats.append(_Seat(team, manager, client, None if nested else f"manager:{manager}"))
    for agent in team._participants:
        client = getattr(agent, "_model_client", None)
        if isinstance(client, ChatCompletionClient):
            node = None if nested else f"agent:{agent.name}"
            seats.append(_Seat(agent, agent.name, client, node))
        inner = agent if isinstance(agent, BaseGroupChat) else getattr(agent, "_team", None)
        if isinstance(inner, BaseGroupChat):
            seats += _seats(inner, nested=True)
    nodes = {seat.node for seat in seats}
    if f"manager:{_manager_name(team)}" in nodes and f"agent:{_manager_name(team)}" in nodes:
        raise OrlaError(f"team {team.name!r} has an agent named like its manager "
                        f"({_manager_name(team)!r}); rename that agent.")
    return seats


def _agent_types(team: BaseGroupChat) -> dict[str, str]:
    """AgentChat's agent types (one per participant and the manager) -> agent names."""
    names = {team._group_chat_manager_topic_type: _manager_name(team)}
    for topic, agent in zip(team._participant_topic_types, team._participants, strict=True):
        names[topic] = agent.name
        inner = agent if isinstance(agent, BaseGroupChat) else getattr(agent, "_team", None)
        if isinstance(inner, BaseGroupChat):
            names.update(_agent_types(inner))
    return names


def _model_of(seat: _Seat, models: Mapping[str, str]) -> str | None:
    hint = seat.client.model if isinstance(seat.client, OrlaChatCompletionClient) else None
    return models.get(seat.agent, hint)


def _create_args_of(client: ChatCompletionClient) -> dict[str, Any]:
    return dict(client.create_args) if isinstance(client, OrlaChatCompletionClient) else {}


def _team_plan(team: BaseGroupChat, name: str, seats: list[_Seat], models: Mapping[str, str],
               selector_priority: int) -> Plan:
    """input -> [manager] -> next speaker -> each agent -> output, with loop edges from the
    agents back to the choice of the next speaker."""
    plan = Plan(name=name, runnable=False)
    plan.meta["autogen"] = {"team": type(team).__name__}
    nodes = [Node(id=INPUT_ID, kind="input", label="task", kwargs={"default": None})]
    decider = INPUT_ID
    for seat in seats:
        if seat.node is not None and seat.node.startswith("manager:"):
            _add_stage(plan, seat, _model_of(seat, models), selector_priority)
            nodes.append(_stage_node(seat.node, seat.agent, [{"$ref": INPUT_ID}], []))
            decider = seat.node
    agents = [s for s in seats if s.node is not None and s.node.startswith("agent:")]
    branch = Node(id="branch:next", kind="branch", label="next speaker",
                  test=BranchTest(op="value"), args=[{"$ref": decider}],
                  choices=[s.agent for s in agents])
    nodes.append(branch)
    for seat in agents:
        assert seat.node is not None
        _add_stage(plan, seat, _model_of(seat, models), None)
        guard = [Condition(branch=branch.id, choices=[seat.agent])]
        nodes.append(_stage_node(seat.node, seat.agent, [], [guard]))
    nodes.append(Node(id="output", kind="output", label="output",
                      args=[{"$ref": s.node} for s in agents]))
    back_to = decider if decider != INPUT_ID else branch.id
    plan.meta["loop_edges"] = [{"src": s.node, "dst": back_to, "label": "next turn"}
                               for s in agents]
    plan.nodes = nodes
    return plan


def _add_stage(plan: Plan, seat: _Seat, model: str | None, priority: int | None) -> None:
    plan.stages[f"autogen:{seat.agent}"] = StageSpec(
        name=seat.agent, ref=NOT_RUNNABLE_REF, model=model, priority=priority,
        params=[Param(name="inputs", kind="var_positional", required=False,
                      type=TypeSpec(kind="any"))],
        doc=f"AutoGen {type(seat.owner).__name__} {seat.agent!r}")


def _stage_node(node_id: str, agent: str, args: list[Any],
                guards: list[list[Condition]]) -> Node:
    return Node(id=node_id, kind="stage", label=agent, stage=f"autogen:{agent}", args=args,
                guards=guards)
