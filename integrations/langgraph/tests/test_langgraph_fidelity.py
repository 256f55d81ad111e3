"""A served graph behaves as it does bare: tutorial-shaped LangGraph apps, each run bare
and then served on the same llama.cpp engine, through a tap that records what reached
the engine. Compared: the state's keys, the messages' types, the steps (nodes per
superstep), the stream's event kinds and each call's settings (token limit, temperature,
stop, seed); and every served call is attributed to a node. Greedy decoding (temperature
0, a seed) keeps SmolLM2's choices the same both ways; its wording is never asserted."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AnyMessage, BaseMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, MessagesState, StateGraph, add_messages
from langgraph.types import Command, Send, interrupt
from orla_langgraph.served import ServedGraph

import orla_sdk as orla
from tests.engine_tap import EngineTap

MODEL = orla.backends.DEFAULT_LOCAL_MODEL
SETTINGS = ("temperature", "stop", "seed", "top_p")
TOKEN_LIMIT = 24


def chat_model(tap: EngineTap, **settings: Any) -> ChatOpenAI:
    options: dict[str, Any] = {"max_tokens": TOKEN_LIMIT, "temperature": 0, "seed": 7}
    return ChatOpenAI(model=MODEL, api_key="unused", base_url=f"{tap.url}/v1",
                      max_retries=0, **{**options, **settings})


def served(graph: Any, tap: EngineTap, **options: Any) -> ServedGraph:
    app = orla.serve(graph, backends=[orla.backends.llamacpp("local", url=tap.url)],
                     mapping={"light": f"local/{MODEL}"}, default_model="light", **options)
    assert isinstance(app, ServedGraph)
    return app


def settings_of(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each call's settings as the engine got them (either name of the token limit), and
    whether it streamed."""
    return [{"limit": body.get("max_completion_tokens", body.get("max_tokens")),
             "stream": bool(body.get("stream")),
             **{key: body.get(key) for key in SETTINGS}} for body in bodies]


def shape(value: Any) -> Any:
    """What must match bare and served: keys, and message types in order."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], BaseMessage):
        return [type(m).__name__ + (":tool_call" if getattr(m, "tool_calls", None) else "")
                for m in value]
    return type(value).__name__


def steps(chunks: list[Any]) -> list[list[str]]:
    """The nodes of each update chunk, subgraphs' chunks under their enclosing nodes."""
    def path(namespace: tuple[str, ...]) -> list[str]:
        return [part.split(":", 1)[0] for part in namespace]  # without the task ids

    return [[*path(namespace), *sorted(update)] if isinstance(update, dict) else
            [*path(namespace), type(update).__name__]
            for namespace, update in (c if isinstance(c, tuple) else ((), c) for c in chunks)]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """Event kinds and names, with runs of one kind (the token stream) counted once."""
    seen = [f"{e['event']}:{e['name']}" for e in events]
    return [kind for i, kind in enumerate(seen) if i == 0 or seen[i - 1] != kind]


def same_both_ways(tap: EngineTap, build: Callable[[], Any],
                   drive: Callable[[Any], Any], **serve_options: Any) -> ServedGraph:
    """``drive`` the graph bare, then served: equal observations and engine settings,
    every served call attributed to a node the plan knows. Returns the served app."""
    tap.clear()
    bare = drive(build())
    bare_calls = tap.chats()
    tap.clear()
    app = served(build(), tap, **serve_options)
    try:
        assert drive(app) == bare
    finally:
        app.close()
    served_calls = tap.chats()
    assert bare_calls, "the app made no model call"
    assert settings_of(served_calls) == settings_of(bare_calls)
    rows = app.report.rows()
    assert sum(len(row.record.calls) for row in rows) == len(served_calls)
    assert all(row.labels["node"] for row in rows if row.record.calls)
    assert all(call.completion_tokens <= TOKEN_LIMIT
               for row in rows for call in row.record.calls)
    return app


class Topics(TypedDict, total=False):
    topics: list[str]
    jokes: Annotated[list[str], operator.add]
    best: str


class Draft(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    approved: bool


class Ticket(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


# ---- the apps ---------------------------------------------------------------------------
def test_a_react_agent_with_tools(engine_tap: EngineTap) -> None:
    def build() -> Any:
        return create_agent(chat_model(engine_tap), tools=[add], name="calculator",
                            system_prompt="Use the add tool to add numbers.")

    def drive(app: Any) -> Any:
        question = {"messages": [("user", "What is 2 plus 3?")]}
        return (shape(app.invoke(question)),
                steps(list(app.stream(question, stream_mode="updates"))))

    app = same_both_ways(engine_tap, build, drive)
    assert {row.labels["node"] for row in app.report.rows()} == {"model"}


def test_a_supervisor_with_sub_agents_invoked_inside_its_nodes(engine_tap: EngineTap) -> None:
    def build() -> Any:
        llm = chat_model(engine_tap)
        researcher = create_agent(llm, tools=[], name="researcher",
                                  system_prompt="You research facts briefly.")
        mathematician = create_agent(llm, tools=[add], name="mathematician",
                                     system_prompt="You add numbers with the add tool.")

        def supervisor(state: MessagesState) -> Command[Any]:
            reply = llm.invoke([("system", "Say who should answer: research or math."),
                                *state["messages"]])
            return Command(goto="research" if len(state["messages"]) < 2 else "math",
                           update={"messages": [reply]})

        def research(state: MessagesState) -> dict[str, Any]:
            return {"messages": researcher.invoke(state)["messages"][-1:]}

        def math(state: MessagesState) -> dict[str, Any]:
            return {"messages": mathematician.invoke(state)["messages"][-1:]}

        graph = StateGraph(MessagesState)
        graph.add_node("supervisor", supervisor, destinations=("research", "math"))
        graph.add_node("research", research, metadata={"orla": {"priority": 80}})
        graph.add_node("math", math)
        graph.add_edge(START, "supervisor")
        graph.add_edge("research", END)
        graph.add_edge("math", END)
        return graph.compile()

    def drive(app: Any) -> Any:
        question = {"messages": [("user", "What is 2 plus 3?")]}
        return (shape(app.invoke(question)),
                steps(list(app.stream(question, stream_mode="updates", subgraphs=True))))

    app = same_both_ways(engine_tap, build, drive,
                         models={"supervisor": "light", "research": "light"})
    nodes = {row.labels["node"] for row in app.report.rows()}
    assert "supervisor" in nodes
    assert any(node.startswith("research:") for node in nodes)  # under its enclosing node


def test_a_map_reduce_with_send(engine_tap: EngineTap) -> None:
    def build() -> Any:
        llm = chat_model(engine_tap)

        def fan_out(state: Topics) -> list[Send]:
            return [Send("joke", {"topics": [topic]}) for topic in state["topics"]]

        def joke(state: Topics) -> Topics:
            return {"jokes": [str(llm.invoke(f"A joke about {state['topics'][0]}").content)]}

        def pick(state: Topics) -> Topics:
            return {"best": str(llm.invoke("Pick one: " + " | ".join(sorted(state["jokes"])))
                                .content)}

        graph = StateGraph(Topics)
        graph.add_node("joke", joke)
        graph.add_node("pick", pick)
        graph.add_conditional_edges(START, fan_out, ["joke"])
        graph.add_edge("joke", "pick")
        graph.add_edge("pick", END)
        return graph.compile()

    def drive(app: Any) -> Any:
        state = app.invoke({"topics": ["cats", "dogs", "owls"]})
        return shape(state), len(state["jokes"])

    app = same_both_ways(engine_tap, build, drive)
    assert len(app.report.rows(node="joke")) == 3


@pytest.mark.parametrize("saver", ["memory", "sqlite"])
def test_human_in_the_loop_with_interrupts(engine_tap: EngineTap, tmp_path: Path,
                                           saver: str) -> None:
    def checkpointer() -> Any:
        if saver == "memory":
            return InMemorySaver()
        database = tmp_path / f"{len(list(tmp_path.iterdir()))}.sqlite"
        return SqliteSaver(sqlite3.connect(database, check_same_thread=False))

    def build() -> Any:
        llm = chat_model(engine_tap)

        def draft(state: Draft) -> Draft:
            return {"messages": [llm.invoke(state["messages"])]}

        def review(state: Draft) -> Draft:
            return {"approved": bool(interrupt({"draft": state["messages"][-1].content}))}

        def revise(state: Draft) -> Draft:
            if state["approved"]:
                return {}
            return {"messages": [llm.invoke([*state["messages"], ("user", "Shorter.")])]}

        graph = StateGraph(Draft)
        graph.add_node("draft", draft)
        graph.add_node("review", review)
        graph.add_node("revise", revise)
        graph.add_edge(START, "draft")
        graph.add_edge("draft", "review")
        graph.add_edge("review", "revise")
        graph.add_edge("revise", END)
        return graph.compile(checkpointer=checkpointer())

    def drive(app: Any) -> Any:
        thread = {"configurable": {"thread_id": "t1"}}
        first = app.invoke({"messages": [("user", "Write a refund note.")]}, thread)
        paused = app.get_state(thread)
        resumed = steps(list(app.stream(Command(resume=False), thread,
                                        stream_mode="updates")))
        return (shape(first), [i.value.keys() for i in paused.interrupts], paused.next,
                resumed, shape(app.get_state(thread).values))

    same_both_ways(engine_tap, build, drive)


def test_a_functional_api_app(engine_tap: EngineTap) -> None:
    def build() -> Any:
        llm = chat_model(engine_tap)

        @task
        def outline(topic: str) -> str:
            return str(llm.invoke(f"Outline: {topic}").content)

        @task
        def expand(point: str) -> str:
            return str(llm.invoke(f"Expand: {point}").content)

        @entrypoint(checkpointer=InMemorySaver())
        def writer(topic: str) -> dict[str, Any]:
            # two points whatever the outline says, so both ways make the same calls
            points = [*outline(topic).result().splitlines(), "one", "two"][:2]
            return {"sections": [f.result() for f in [expand(p) for p in points]]}

        return writer

    def drive(app: Any) -> Any:
        thread = {"configurable": {"thread_id": "w1"}}
        return (shape(app.invoke("refunds", thread)),
                steps(list(app.stream("returns", {"configurable": {"thread_id": "w2"}},
                                      stream_mode="updates"))))

    app = same_both_ways(engine_tap, build, drive, models={"outline": "light"})
    assert {row.labels["node"] for row in app.report.rows()} >= {"writer:outline",
                                                                   "writer:expand"}


def test_an_async_app_and_its_event_stream(engine_tap: EngineTap) -> None:
    def build() -> Any:
        llm = chat_model(engine_tap, streaming=True)

        async def triage(state: Ticket) -> Ticket:
            return {"messages": [await llm.ainvoke(state["messages"])]}

        async def answer(state: Ticket) -> Ticket:
            return {"messages": [await llm.ainvoke([("system", "Answer in a sentence."),
                                                    *state["messages"]])]}

        graph = StateGraph(Ticket)
        graph.add_node("triage", triage)
        graph.add_node("answer", answer)
        graph.add_edge(START, "triage")
        graph.add_edge("triage", "answer")
        graph.add_edge("answer", END)
        return graph.compile()

    def drive(app: Any) -> Any:
        question = {"messages": [("user", "My card was charged twice.")]}

        async def observed() -> Any:
            state = await app.ainvoke(question)
            updates = [chunk async for chunk in app.astream(question, stream_mode="updates")]
            events = [event async for event in app.astream_events(question, version="v2")]
            return shape(state), steps(updates), kinds(events)

        return asyncio.run(observed())

    same_both_ways(engine_tap, build, drive)


# ---- helpers ----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_leftover_serving_threads() -> Iterator[None]:
    yield
    import threading

    assert not [t.name for t in threading.enumerate() if t.name.startswith("orla-serve-")]
