"""Simulated engines and teams the AutoGen tests share: engines that keep the requests
they serve and follow a script, a selector team of ``autogen_client`` placeholders, and
a served team run on a fresh event loop."""

from __future__ import annotations

import ast
import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import BaseGroupChat, SelectorGroupChat
from autogen_core.models import UserMessage
from orla_autogen import OrlaChatCompletionClient, ServedTeam, autogen_client

import orla_sdk as orla
from orla_sdk.backends import ChatRequest, ChatResult
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.ir import BackendSpec

T = TypeVar("T")
SIM_MAPPING = {"light": "light/smollm2-135m", "heavy": "heavy/qwen3-8b"}
AGENTS = ("planner", "coder", "critic")
CHOICES = re.compile(r"select the next role from (\[[^\]]*\])")
Script = Callable[[ChatRequest, ChatResult], ChatResult]


class ScriptedSim(SimEngine):
    """A simulated engine that keeps the requests it serves. Asked by a selector, it names
    nobody at first and, told so, the last candidate: a fixed course through the team.
    ``script`` rewrites its other replies."""

    def __init__(self, profile: str, name: str, clock: VirtualClock) -> None:
        super().__init__(profile, name=name, clock=clock)
        self.requests: list[ChatRequest] = []
        self.script: Script | None = None

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        result = await super().chat(request)
        prompt = str(request.messages[0].get("content", ""))
        choices = CHOICES.search(prompt)
        if choices is None:
            return result if self.script is None else self.script(request, result)
        retried = "No valid name" in str(request.messages[-1].get("content", ""))
        return replace(result, content=ast.literal_eval(choices[1])[-1] if retried else "nobody")

    def priorities(self) -> list[int | None]:
        return [r.priority for r in self.requests]


class GatedSim(ScriptedSim):
    """A simulated engine whose calls wait for ``opened`` (a slow engine): ``waiting`` is
    set once a call waits, ``cancelled`` counts the calls cancelled while they waited."""

    def __init__(self, profile: str, name: str, clock: VirtualClock) -> None:
        super().__init__(profile, name=name, clock=clock)
        self.waiting = threading.Event()
        self.opened = threading.Event()
        self.cancelled = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.waiting.set()
        try:
            while not self.opened.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().chat(request)


def sims() -> dict[str, ScriptedSim]:
    clock = VirtualClock()
    return {"light": ScriptedSim("smollm2-135m", "light", clock),
            "heavy": ScriptedSim("qwen3-8b", "heavy", clock)}


def sim_backends(*, tool_calling: bool = True) -> list[BackendSpec]:
    light = orla.backends.simulator("light", "smollm2-135m")
    light = light.model_copy(update={"capabilities": light.capabilities.model_copy(
        update={"tool_calling": tool_calling})})
    return [light, orla.backends.simulator("heavy", "qwen3-8b")]


def selector_team(*, stream: bool = False, agents: tuple[str, ...] = AGENTS,
                  messages: int = 4) -> SelectorGroupChat:
    return SelectorGroupChat(
        [AssistantAgent(name, model_client=autogen_client(), description=f"the {name}",
                        model_client_stream=stream) for name in agents],
        model_client=autogen_client(), termination_condition=MaxMessageTermination(messages),
        max_selector_attempts=2)


def serve_on_sims(team: BaseGroupChat, engines: dict[str, ScriptedSim], *,
                  tool_calling: bool = True, **options: Any) -> ServedTeam:
    backends = sim_backends(tool_calling=tool_calling)
    options = {"models": {"coder": "heavy"}, "default_model": "light", **options}
    served = orla.serve(team, backends=backends, mapping=SIM_MAPPING,
                        pool=orla.BackendPool(backends, clients=engines), **options)
    assert isinstance(served, ServedTeam)
    return served


def served_run(served: ServedTeam, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` on a fresh event loop, then the served team closed."""
    async def go() -> T:
        try:
            return await asyncio.wait_for(work(), timeout=60)
        finally:
            await served.aclose()

    return asyncio.run(go())


def client_of(team: BaseGroupChat, agent: str) -> OrlaChatCompletionClient:
    participant = next(p for p in team._participants if p.name == agent)
    client = getattr(participant, "_model_client", None)
    assert isinstance(client, OrlaChatCompletionClient)
    return client


def ask(text: str) -> list[Any]:
    return [UserMessage(content=text, source="user")]
