"""What every backend offers the runtime: one chat call, with the engine's own counters.

A ``Backend`` serves the requests of the stages mapped to it. Its ``spec`` (a
``BackendSpec`` of the plan) carries the capability flags the passes checked; the result
of each call carries what the engine reported: tokens, cached prompt tokens, time to
first token and total time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from orla_sdk.agents import AgentKey
from orla_sdk.ir import BackendSpec

_SAME: Any = object()  # a field ChatRequest.evolve leaves as it is


@dataclass(frozen=True)
class ChatRequest:
    """One model call. ``json_schema`` constrains the reply to JSON of that schema;
    ``slot`` pins the request to a llama.cpp slot; ``priority`` is orla's 0..100 hint;
    ``agent`` says who makes the call; ``on_token`` receives the reply's text as it
    streams in. ``stream`` asks the engine for a streamed reply: orla's own calls stream,
    to time the first token; a call carried for a client (the proxy, a served app) streams
    exactly when the client asked, so the engine serves it as it would bare."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    tools: list[dict[str, Any]] = field(default_factory=list)
    slot: int | None = None
    priority: int | None = None
    agent: AgentKey | None = None
    on_token: Callable[[str], None] | None = field(default=None, compare=False)
    stream: bool = True

    def evolve(self, *, slot: int | None = _SAME, agent: AgentKey | None = _SAME,
               on_token: Callable[[str], None] | None = _SAME) -> ChatRequest:
        """A copy with the fields the call path sets: ``dataclasses.replace`` without its
        per-call field checks, since it runs on every model call."""
        copy = object.__new__(ChatRequest)
        fields = copy.__dict__
        fields.update(self.__dict__)
        if slot is not _SAME:
            fields["slot"] = slot
        if agent is not _SAME:
            fields["agent"] = agent
        if on_token is not _SAME:
            fields["on_token"] = on_token
        return copy


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class ChatResult:
    content: str
    tool_calls: list[ToolCall]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float | None  # None where the reply was not streamed: its first token unseen
    duration_s: float


class Backend(Protocol):
    spec: BackendSpec

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    async def aclose(self) -> None: ...


def token_limit(request: ChatRequest) -> int | None:
    """The request's cap on reply tokens, under either of its OpenAI names."""
    return params_token_limit(request.params)


def params_token_limit(params: Mapping[str, Any]) -> int | None:
    """The cap on reply tokens in a call's parameters, under either of its OpenAI names."""
    limit = params.get("max_tokens") or params.get("max_completion_tokens")
    return None if limit is None else int(limit)
