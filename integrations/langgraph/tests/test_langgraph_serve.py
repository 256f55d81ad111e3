"""``orla.serve(graph)``: LangGraph apps whose own ``ChatOpenAI`` / ``init_chat_model`` /
``openai`` calls orla serves. The simulator backends give fast checks of attribution,
routing, priorities, streaming and reports; the real llama.cpp engine checks that an
interrupt saves the thread's slot and the resume finds its context cached again."""

from __future__ import annotations

import asyncio
import contextvars
import operator
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypedDict

import openai
import pytest
from langchain.chat_models import init_chat_model
from langchain_core.messages import AIMessageChunk, AnyMessage
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph, add_messages
from langgraph.types import Command, Send, interrupt
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from orla_langgraph.served import ServedGraph

import orla_sdk as orla
from orla_sdk.backends.engine import LocalEngine, free_port
from orla_sdk.errors import AdapterNotFound, PlanValidationError
from tests.engine_tap import EngineTap

NOWHERE = f"http://127.0.0.1:{free_port()}/v1"  # the apps' own endpoint: nothing listens
BACKENDS = [orla.backends.simulator("light", "smollm2-135m"),
            orla.backends.simulator("heavy", "qwen3-8b")]
MAPPING = {"light": orla.Target(backend="light", model="smollm2-135m",
                                params={"max_tokens": 16}),
           "heavy": orla.Target(backend="heavy", model="qwen3-8b", params={"max_tokens": 16})}
LIGHT = ChatOpenAI(model="gpt-4o-mini", api_key="unused", base_url=NOWHERE, max_retries=0)
HEAVY = init_chat_model("openai:gpt-4o", api_key="unused", base_url=NOWHERE, max_retries=0)


class Ticket(TypedDict, total=False):
    ticket: str
    label: str
    answer: str
    notes: Annotated[list[str], operator.add]


def classify(state: Ticket) -> Ticket:
    return {"label": str(LIGHT.invoke(f"Classify: {state['ticket']}").content)}


def answer(state: Ticket) -> Ticket:
    reply = HEAVY.invoke([("system", "You answer tickets."), ("user", state["ticket"])])
    return {"answer": str(reply.content)}


def support_graph(**compile_options: Any) -> Any:
    graph = StateGraph(Ticket)
    graph.add_node("classify", classify, metadata={"orla": {"model": "light"}})
    graph.add_node("answer", answer, metadata={"orla": {"model": "heavy", "priority": 90}})
    graph.add_edge(START, "classify")
    graph.add_edge("classify", "answer")
    graph.add_edge("answer", END)
    return graph.compile(**compile_options)


@pytest.fixture
def served() -> Iterator[ServedGraph]:
    app = orla.serve(support_graph(checkpointer=InMemorySaver()), backends=BACKENDS,
                     mapping=MAPPING, prices={"heavy": orla.Price(input=1.0, output=2.0)})
    yield app
    app.close()


def one_node_graph(name: str, node: Any, model: str | None = None) -> Any:
    """A graph of one node, ``name``, mapped to ``model`` by its orla metadata."""
    graph = StateGraph(Ticket)
    graph.add_node(name, node, metadata={"orla": {"model": model}} if model else None)
    graph.add_edge(START, name)
    return graph


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def backends_of(app: ServedGraph, node: str) -> set[str]:
    return {c.backend for row in app.report.rows(node=node) for c in row.record.calls}


# ---- attribution and routing ------------------------------------------------------------
def test_each_node_is_served_by_its_mapped_backend(served: ServedGraph) -> None:
    state = served.invoke({"ticket": "I was charged twice."}, thread("t1"))
    assert state["label"] and state["answer"]
    assert backends_of(served, "classify") == {"light"}
    assert backends_of(served, "answer") == {"heavy"}
    rows = served.report.rows(thread_id="t1")
    assert [(r.labels["node"], r.labels["step"]) for r in rows] == [("classify", 1),
                                                                      ("answer", 2)]
    assert all(r.labels["graph"] == served.name for r in rows)


def test_calls_outside_a_served_invocation_go_to_the_apps_own_endpoint(
        served: ServedGraph) -> None:
    served.invoke({"ticket": "hello"}, thread("t1"))
    with pytest.raises(openai.APIConnectionError):
        LIGHT.invoke("not served")
    with pytest.raises(openai.APIConnectionError):
        support_graph().invoke({"ticket": "the bare graph is not served"})


def test_node_priority_reaches_the_backend_queue(served: ServedGraph,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    pool = served.session.pool
    call = pool.call

    async def recording(backend: str, request: Any, **kw: Any) -> Any:
        seen.append((kw["stage"], kw["priority"]))
        return await call(backend, request, **kw)

    monkeypatch.setattr(pool, "call", recording)
    served.invoke({"ticket": "hello"}, thread("t1"))
    assert dict(seen) == {"classify": served.plan.node("classify").meta["priority"]["value"],
                          "answer": 90}


def test_report_totals_per_node_and_thread(served: ServedGraph) -> None:
    served.invoke({"ticket": "one"}, thread("a"))
    served.invoke({"ticket": "two"}, thread("b"))
    served.invoke({"ticket": "three"}, thread("b"))
    report = served.report.to_json()
    calls = [c for row in served.report.rows() for c in row.record.calls]
    assert report["total"]["calls"] == len(calls) == 6
    assert report["by_thread_id"]["a"]["calls"] == 2
    assert report["by_thread_id"]["b"]["calls"] == 4
    # each node is an agent of its own
    assert {a: t["calls"] for a, t in report["by_agent"].items()} == {
        n: t["calls"] for n, t in report["by_node"].items()}
    assert report["by_node"]["classify"]["cost_usd"] == 0.0  # no price for "light"
    heavy = report["by_node"]["answer"]
    fresh = heavy["prompt_tokens"] - heavy["cached_tokens"]
    assert heavy["cost_usd"] == pytest.approx(
        (fresh * 1.0 + heavy["cached_tokens"] * 1.0 + heavy["completion_tokens"] * 2.0) / 1e6)
    for totals in report["by_node"].values():
        assert totals["prompt_tokens"] > 0 and totals["completion_tokens"] > 0
        assert totals["engine_s"] > 0
        assert totals["ttft_s_median"] is None  # the app's calls do not stream: no TTFT


def test_a_thread_keeps_its_slot_between_turns_and_finds_its_context_cached(
        served: ServedGraph) -> None:
    served.invoke({"ticket": "A long ticket about a double charge. " * 8}, thread("t1"))
    served.invoke({"ticket": "A long ticket about a double charge. " * 8}, thread("t1"))
    first, second = (row.record.calls[0] for row in served.report.rows(node="classify"))
    assert first.slot == second.slot is not None
    assert first.cached_tokens == 0 and second.cached_tokens > 0
    # the node's context is saved as its template, and the slot is left holding it
    (ended,) = served.end_thread("t1")
    assert ended["decision"] == "keep" and ended["action"].endswith(" and leave it there")
    # so a new thread's first call takes that slot and finds its prefix there, unrestored
    served.invoke({"ticket": "A long ticket about a double charge. " * 8}, thread("t2"))
    third = served.report.rows(node="classify")[-1].record.calls[0]
    assert third.slot == first.slot and third.cached_tokens > 0
    (restore,) = [e["action"] for e in served.cache_log if e["decision"] == "restore"]
    assert restore.startswith(f"none: slot {first.slot} holds classify's template already")


def test_a_node_hinted_to_flush_drops_the_threads_context_once_its_step_is_over() -> None:
    def recheck(state: Ticket) -> Ticket:  # the same prefix as classify's prompt
        return {"notes": [str(LIGHT.invoke(f"Classify: {state['ticket']} Again?").content)]}

    def graph(hint: dict[str, str]) -> Any:
        g = StateGraph(Ticket)
        g.add_node("classify", classify, metadata={"orla": {"model": "light", **hint}})
        g.add_node("answer", answer, metadata={"orla": {"model": "heavy"}})
        g.add_node("recheck", recheck, metadata={"orla": {"model": "light"}})
        g.add_edge(START, "classify")
        g.add_edge("classify", "answer")
        g.add_edge("answer", "recheck")
        return g.compile(checkpointer=InMemorySaver())

    def recheck_cached(hint: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
        with orla.serve(graph(hint), backends=BACKENDS, mapping=MAPPING) as app:
            app.invoke({"ticket": "A long ticket about a double charge. " * 8}, thread("t"))
            (row,) = app.report.rows(node="recheck")
            return row.record.calls[0].cached_tokens, app.cache_log

    kept, kept_log = recheck_cached({})
    flushed, flushed_log = recheck_cached({"cache": "flush"})
    assert kept > 0 and kept_log == []  # unhinted: the thread keeps its context
    # classify's step was over when answer began: its slot was erased before recheck ran
    assert flushed == 0
    (entry,) = flushed_log
    assert entry["node"] == "classify" and entry["decision"] == "flush"
    assert entry["action"].startswith("erase slot") and entry["thread_id"] == "t"


# ---- the graph's API ---------------------------------------------------------------------
def test_stream_modes_match_invoke(served: ServedGraph) -> None:
    updates = list(served.stream({"ticket": "x"}, thread("s1"), stream_mode="updates"))
    assert [next(iter(u)) for u in updates] == ["classify", "answer"]
    values = list(served.stream({"ticket": "x"}, thread("s2"), stream_mode="values"))
    assert set(values[-1]) >= {"ticket", "label", "answer"}
    pieces = [(chunk, meta) for chunk, meta in
              served.stream({"ticket": "x"}, thread("s3"), stream_mode="messages")]
    assert pieces and all(isinstance(chunk, AIMessageChunk) for chunk, _ in pieces)
    streamed = {meta["langgraph_node"] for _, meta in pieces}
    assert streamed == {"classify", "answer"}
    assert len(served.report.rows(thread_id="s3")) == 2


def test_async_nodes_ainvoke_and_astream() -> None:
    async def aclassify(state: Ticket) -> Ticket:
        return {"label": str((await LIGHT.ainvoke(state["ticket"])).content)}

    graph = StateGraph(Ticket)
    graph.add_node("aclassify", aclassify, metadata={"orla": {"model": "light"}})
    graph.add_node("answer", answer, metadata={"orla": {"model": "heavy"}})
    graph.add_edge(START, "aclassify")
    graph.add_edge("aclassify", "answer")

    async def main(app: ServedGraph) -> list[Any]:
        state = await app.ainvoke({"ticket": "hi"})
        assert state["label"] and state["answer"]
        return [c async for c in app.astream({"ticket": "hi"}, stream_mode="messages")]

    with orla.serve(graph.compile(), backends=BACKENDS, mapping=MAPPING) as app:
        chunks = asyncio.run(main(app))
        assert {meta["langgraph_node"] for _, meta in chunks} == {"aclassify", "answer"}
        assert backends_of(app, "aclassify") == {"light"}
        assert len(app.report.rows()) == 4


def test_send_fan_out_and_subgraph_nodes_are_attributed() -> None:
    def fan_out(state: Ticket) -> list[Send]:
        return [Send("draft", {"ticket": f"{state['ticket']} #{i}"}) for i in range(3)]

    def draft(state: Ticket) -> Ticket:
        return {"notes": [str(HEAVY.invoke(state["ticket"]).content)]}

    inner = StateGraph(Ticket)
    inner.add_node("check", classify)
    inner.add_edge(START, "check")
    graph = StateGraph(Ticket)
    graph.add_node("start", lambda state: {"notes": []})
    graph.add_node("draft", draft, metadata={"orla": {"model": "heavy"}})
    graph.add_node("review", inner.compile())
    graph.add_edge(START, "start")
    graph.add_conditional_edges("start", fan_out, ["draft"])
    graph.add_edge("draft", "review")
    with orla.serve(graph.compile(), backends=BACKENDS, mapping=MAPPING,
                    models={"review:check": "light"}) as app:
        state = app.invoke({"ticket": "t"})
        assert state["notes"] and state["label"]
        assert len(app.report.rows(node="draft")) == 3  # one unit per Send packet
        assert len({r.labels["task"] for r in app.report.rows(node="draft")}) == 3
        assert backends_of(app, "draft") == {"heavy"}
        assert backends_of(app, "review:check") == {"light"}


def test_functional_api_tasks_are_units_mapped_by_name() -> None:
    @task
    def summarize(text: str) -> str:
        return str(LIGHT.invoke(f"Summarize: {text}").content)

    @entrypoint(checkpointer=InMemorySaver())
    def pipeline(text: str) -> dict[str, str]:
        summary = summarize(text).result()
        return {"summary": summary, "answer": str(HEAVY.invoke(summary).content)}

    with orla.serve(pipeline, backends=BACKENDS, mapping=MAPPING,
                    models={"pipeline": "heavy", "summarize": "light"}) as app:
        out = app.invoke("a long text", thread("f1"))
        assert out["summary"] and out["answer"]
        assert backends_of(app, "pipeline:summarize") == {"light"}
        assert backends_of(app, "pipeline") == {"heavy"}


def test_a_task_the_entrypoint_calls_through_a_helper_is_mapped_by_name(
        caplog: pytest.LogCaptureFixture) -> None:
    @task
    def summarize(text: str) -> str:
        return str(LIGHT.invoke(f"Summarize: {text}").content)

    def helper(text: str) -> str:  # the entrypoint does not name the task itself
        return summarize(text).result()

    @entrypoint()
    def pipeline(text: str) -> str:
        return helper(text)

    with orla.serve(pipeline, backends=BACKENDS, mapping=MAPPING,
                    models={"pipeline": "heavy", "summarize": "light"}) as app:
        assert app.invoke("a long text")
        assert backends_of(app, "pipeline:summarize") == {"light"}
    assert "names ['summarize']" in caplog.text


def test_plain_openai_clients_in_nodes_are_served_too(served: ServedGraph) -> None:
    client = openai.OpenAI(api_key="unused", base_url=NOWHERE, max_retries=0)

    def node(state: Ticket) -> Ticket:
        reply = client.chat.completions.create(
            model="whatever", messages=[{"role": "user", "content": state["ticket"]}])
        return {"answer": reply.choices[0].message.content or ""}

    graph = one_node_graph("plain", node, model="light")
    with orla.serve(graph.compile(), backends=BACKENDS, mapping=MAPPING) as app:
        assert app.invoke({"ticket": "hi"})["answer"]
        assert backends_of(app, "plain") == {"light"}


def test_batch_runs_invocations_concurrently(served: ServedGraph) -> None:
    states = served.batch([{"ticket": f"ticket {i}"} for i in range(4)],
                          [thread(f"b{i}") for i in range(4)])
    assert all(s["answer"] for s in states)
    assert set(served.report.to_json()["by_thread_id"]) == {"b0", "b1", "b2", "b3"}


def test_interrupt_pauses_the_thread_and_resume_goes_on(served: ServedGraph) -> None:
    def approve(state: Ticket) -> Ticket:
        return {"label": f"{state['label']} (approved: {interrupt('approve?')})"}

    graph = StateGraph(Ticket)
    graph.add_node("classify", classify, metadata={"orla": {"model": "light"}})
    graph.add_node("approve", approve)
    graph.add_node("answer", answer, metadata={"orla": {"model": "heavy"}})
    graph.add_edge(START, "classify")
    graph.add_edge("classify", "approve")
    graph.add_edge("approve", "answer")
    with orla.serve(graph.compile(checkpointer=InMemorySaver()), backends=BACKENDS,
                    mapping=MAPPING) as app:
        paused = app.invoke({"ticket": "refund please"}, thread("h1"))
        assert "__interrupt__" in paused and "answer" not in paused
        assert [e["decision"] for e in app.cache_log] == ["suspend"]
        done = app.invoke(Command(resume="yes"), thread("h1"))
        assert done["answer"] and "approved: yes" in done["label"]
        assert len(app.report.rows(thread_id="h1", node="answer")) == 1


# ---- nested units, models keys, every run method, thread pools -------------------------
def supervised_graph() -> Any:
    """The supervisor shape: a node that invokes a sub-agent (a compiled graph) itself."""
    inner = StateGraph(Ticket)
    inner.add_node("check", classify)
    inner.add_edge(START, "check")
    sub_agent = inner.compile()

    def supervisor(state: Ticket) -> Ticket:
        return {"label": sub_agent.invoke(state)["label"]}

    graph = one_node_graph("supervisor", supervisor)
    return graph.compile()


def test_a_sub_agent_inside_a_node_takes_its_model_and_is_reported_under_it() -> None:
    with orla.serve(supervised_graph(), backends=BACKENDS, mapping=MAPPING,
                    models={"supervisor": "heavy"}) as app:
        assert app.invoke({"ticket": "t"})["label"]
        assert backends_of(app, "supervisor:check") == {"heavy"}
        assert not [n.id for n in app.plan.nodes if n.id.endswith(("__start__", "__end__"))]


def test_a_subgraph_nodes_inner_nodes_take_the_model_of_the_node_it_is() -> None:
    inner = StateGraph(Ticket)
    inner.add_node("check", classify)
    inner.add_edge(START, "check")
    graph = StateGraph(Ticket)
    graph.add_node("review", inner.compile(), metadata={"orla": {"model": "heavy",
                                                                  "priority": 70}})
    graph.add_edge(START, "review")
    plan = orla.compile(graph.compile(), backends=BACKENDS, mapping=MAPPING)
    spec = plan.stage_of(plan.node("review:check"))
    assert (spec.model, spec.priority) == ("heavy", 70)
    assert [n.id for n in plan.nodes if n.kind == "stage"] == ["review:check"]


def test_models_keys_that_name_nothing_are_an_error_naming_the_nodes() -> None:
    with pytest.raises(orla.OrlaError, match=r"names \['clasify'\].*\['answer', 'classify'\]"):
        orla.serve(support_graph(), backends=BACKENDS, mapping=MAPPING,
                   models={"clasify": "light"})


@pytest.mark.filterwarnings("ignore:astream_log is deprecated")  # LangChain's, still served
@pytest.mark.parametrize("method", ["astream_events", "astream_log", "abatch_as_completed"])
def test_every_async_run_method_is_served(method: str) -> None:
    async def drive(app: ServedGraph) -> list[Any]:
        if method == "abatch_as_completed":
            return [item async for item in app.abatch_as_completed([{"ticket": "a"},
                                                                    {"ticket": "b"}])]
        options = {"version": "v2"} if method == "astream_events" else {}
        return [item async for item in getattr(app, method)({"ticket": "a"}, **options)]

    with orla.serve(support_graph(), backends=BACKENDS, mapping=MAPPING) as app:
        assert asyncio.run(drive(app))
        calls = 4 if method == "abatch_as_completed" else 2
        assert sum(len(r.record.calls) for r in app.report.rows()) == calls


def test_sync_run_methods_are_served_and_others_refused(served: ServedGraph) -> None:
    done = dict(served.batch_as_completed([{"ticket": "a"}, {"ticket": "b"}],
                                          [thread("x1"), thread("x2")]))
    assert sorted(done) == [0, 1] and all(state["answer"] for state in done.values())
    assert sum(len(r.record.calls) for r in served.report.rows()) == 4
    assert served.get_state(thread("none")).values == {}  # the graph's own state methods
    for refused in ("pipe", "with_retry", "transform", "stream_events", "with_listeners"):
        with pytest.raises(orla.OrlaError, match=f"ServedGraph.{refused}.. would run the graph"):
            getattr(served, refused)


def test_batch_returns_exceptions_when_asked(served: ServedGraph) -> None:
    results = served.batch([{"ticket": "a"}, {}], [thread("y1"), thread("y2")],
                           return_exceptions=True)
    assert results[0]["answer"] and isinstance(results[1], KeyError)


def test_threads_a_node_starts_are_served_while_its_invocation_lasts() -> None:
    late: list[BaseException] = []
    go_on = threading.Event()

    def outlive() -> None:  # still running after the invocation has returned
        go_on.wait(5)
        try:
            LIGHT.invoke("after the invocation")
        except Exception as exc:  # not served: the app's own endpoint (nothing listens)
            late.append(exc)

    def fan_out(state: Ticket) -> Ticket:
        notes: list[str] = []
        workers = [threading.Thread(target=lambda i=i: notes.append(
            str(LIGHT.invoke(f"note {i}").content))) for i in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        threading.Thread(target=outlive, daemon=True).start()
        return {"notes": notes}

    graph = one_node_graph("notes", fan_out, model="light")
    with orla.serve(graph.compile(), backends=BACKENDS, mapping=MAPPING) as app:
        assert len(app.invoke({"ticket": "t"})["notes"]) == 2
        go_on.set()
        for _ in range(250):
            if late:
                break
            time.sleep(0.02)
        assert sum(len(r.record.calls) for r in app.report.rows(node="notes")) == 2
        assert late and isinstance(late[0], openai.APIConnectionError)


CALLER = contextvars.ContextVar("caller", default="unset")


def test_batches_run_as_langchains_do(served: ServedGraph) -> None:
    """The caller's context reaches each input, max_concurrency holds, a failure stops
    the inputs not yet started."""
    running = peak = 0
    started: list[str] = []
    counting = threading.Lock()

    def note(state: Ticket) -> Ticket:
        nonlocal running, peak
        with counting:
            started.append(state["ticket"])
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with counting:
            running -= 1
        if state["ticket"] == "fail":
            raise ValueError("this input fails")
        return {"label": CALLER.get()}

    graph = one_node_graph("note", note)
    with orla.serve(graph.compile(), backends=BACKENDS, mapping=MAPPING) as app:
        CALLER.set("the caller")
        states = app.batch([{"ticket": "a"}, {"ticket": "b"}])
        assert [s["label"] for s in states] == ["the caller", "the caller"]
        asyncio.run(app.abatch([{"ticket": str(i)} for i in range(6)],
                               {"max_concurrency": 2}))
        assert peak == 2
        started.clear()
        with pytest.raises(ValueError, match="this input fails"):
            list(app.batch_as_completed([{"ticket": "fail"}] + [{"ticket": "x"}] * 5,
                                        {"max_concurrency": 1}))
        assert len(started) < 6


def test_a_failed_invocation_of_a_thread_without_checkpointer_leaves_no_run() -> None:
    def fail(state: Ticket) -> Ticket:
        LIGHT.invoke("hello")
        raise ValueError("the node fails")

    graph = one_node_graph("fail", fail, model="light")
    with orla.serve(graph.compile(), backends=BACKENDS, mapping=MAPPING) as app:
        for turn in range(3):
            with pytest.raises(ValueError, match="the node fails"):
                app.invoke({"ticket": "t"}, thread(f"gone-{turn}"))
        for _ in range(100):  # the runs are settled in the background
            if not app.session._runs:
                break
            time.sleep(0.02)
        assert not app.session._runs


def test_a_thread_idle_past_the_limit_loses_its_run_and_comes_back_cold() -> None:
    with orla.serve(support_graph(checkpointer=InMemorySaver()), backends=BACKENDS,
                    mapping=MAPPING, thread_idle_s=0.2) as app:
        app.invoke({"ticket": "first"}, thread("quiet"))
        app.invoke({"ticket": "first"}, thread("busy"))
        assert set(app.session._runs) == {f"{app.name}:quiet", f"{app.name}:busy"}
        time.sleep(0.3)
        app.invoke({"ticket": "again"}, thread("busy"))  # the sweep runs as it starts
        for _ in range(100):  # ended in the background
            if f"{app.name}:quiet" not in app.session._runs:
                break
            time.sleep(0.02)
        assert set(app.session._runs) == {f"{app.name}:busy"}
        assert [e["thread_id"] for e in app.cache_log
                if e["reason"] == "end of workflow"] == ["quiet"]
        assert app.get_state(thread("quiet")).values["ticket"] == "first"  # the saver's
        app.invoke({"ticket": "back"}, thread("quiet"))  # a new run, prefilled again
        assert f"{app.name}:quiet" in app.session._runs


def test_model_calls_from_a_thread_pool_inside_a_node_are_served() -> None:
    def fan_out(state: Ticket) -> Ticket:
        with ThreadPoolExecutor(3) as threads:
            notes = list(threads.map(lambda i: str(LIGHT.invoke(f"note {i}").content), range(3)))
        return {"notes": notes}

    graph = one_node_graph("notes", fan_out, model="light")
    with orla.serve(graph.compile(), backends=BACKENDS, mapping=MAPPING) as app:
        assert len(app.invoke({"ticket": "t"})["notes"]) == 3
        assert sum(len(r.record.calls) for r in app.report.rows(node="notes")) == 3


# ---- reports as OpenTelemetry spans --------------------------------------------------------
def test_each_invocation_exports_unit_and_call_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with orla.serve(support_graph(), backends=BACKENDS, mapping=MAPPING,
                    tracer=provider.get_tracer("test")) as app:
        app.invoke({"ticket": "hi"})
    spans = {span.name: span for span in exporter.get_finished_spans()}
    unit, call = spans["orla.unit answer"], spans["chat qwen3-8b"]
    assert call.parent is not None and call.parent.span_id == unit.context.span_id
    assert unit.attributes is not None and call.attributes is not None
    assert unit.attributes["orla.node"] == "answer" and unit.attributes["orla.calls"] == 1
    assert call.attributes["gen_ai.usage.input_tokens"] > 0
    assert call.attributes["orla.backend"] == "heavy"
    assert unit.start_time is not None and unit.end_time is not None
    assert call.start_time is not None and call.end_time is not None
    assert unit.start_time <= call.start_time <= call.end_time <= unit.end_time


# ---- bad input and failures ----------------------------------------------------------------
def test_serve_rejects_what_it_cannot_serve() -> None:
    with pytest.raises(AdapterNotFound, match="installed: autogen, langgraph"):
        orla.serve(lambda state: state)
    with pytest.raises(orla.OrlaError, match=r"compile it first: orla\.serve\(builder"):
        orla.serve(StateGraph(Ticket))
    with pytest.raises(PlanValidationError, match="heavy"):
        orla.serve(support_graph(), backends=BACKENDS[:1],
                   mapping={"light": MAPPING["light"]})


def test_an_engine_that_is_down_fails_the_call_with_its_name_and_the_app_goes_on() -> None:
    down = orla.backends.openai_compatible("down", f"http://127.0.0.1:{free_port()}/v1")
    mapping = {**MAPPING, "heavy": orla.Target(backend="down", model="m")}
    with orla.serve(support_graph(checkpointer=InMemorySaver()),
                    backends=[*BACKENDS, down], mapping=mapping) as app:
        app.session.pool.timeout = 2.0
        app.session.pool.engine_down_s = 0.0  # fail at once rather than wait for it to be up
        with pytest.raises(openai.APIStatusError, match="down"):
            app.invoke({"ticket": "hi"}, thread("x"))
        assert backends_of(app, "classify") == {"light"}  # the light node was served
        state = app.get_state(thread("x"))
        assert state.next == ("answer",)  # the checkpoint can be resumed once it is up


def test_closing_after_the_engine_died_keeps_the_apps_error_and_stops_the_loop(
        llama_engine: LocalEngine, caplog: pytest.LogCaptureFixture) -> None:
    engine = EngineTap(llama_engine.url)  # a stand-in engine that can die
    app = orla.serve(support_graph(checkpointer=InMemorySaver()),
                     backends=[orla.backends.llamacpp("local", url=engine.url)],
                     mapping={name: orla.Target(backend="local",
                                                model=orla.backends.DEFAULT_LOCAL_MODEL,
                                                params={"max_tokens": 4})
                              for name in ("light", "heavy")})
    with pytest.raises(ValueError, match="the app's own error"), app:
        app.invoke({"ticket": "hi"}, thread("d1"))  # the thread keeps its slot
        engine.close()
        raise ValueError("the app's own error")
    assert not app.session._thread.running
    assert "cannot reach llama.cpp" in caplog.text  # what closing could not do is logged


# ---- the real engine: an interrupt saves the slot, the resume restores it ------------------
class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


RULES = "You are a support agent. " + " ".join(
    f"Rule {i}: answer precisely and politely." for i in range(40))


def test_interrupt_saves_the_slot_and_resume_restores_it(llama_engine: LocalEngine) -> None:
    llm = ChatOpenAI(model="any", api_key="unused", base_url=NOWHERE, max_retries=0,
                     max_tokens=24, temperature=0)

    def draft(state: Chat) -> Chat:
        return {"messages": [llm.invoke([("system", RULES), *state["messages"]])]}

    def review(state: Chat) -> Chat:
        return {"messages": [("user", f"Reviewer: {interrupt('review the draft')}")]}

    graph = StateGraph(Chat)
    graph.add_node("draft", draft)
    graph.add_node("review", review)
    graph.add_node("final", draft)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "review")
    graph.add_edge("review", "final")
    local = orla.backends.llamacpp("local", url=llama_engine.url)
    with orla.serve(graph.compile(checkpointer=InMemorySaver()), backends=[local],
                    mapping={"agent": f"local/{orla.backends.DEFAULT_LOCAL_MODEL}"},
                    default_model="agent") as app:
        app.invoke({"messages": [("user", "I was charged twice.")]}, thread("r1"))
        assert [e["decision"] for e in app.cache_log] == ["suspend"]
        assert app.cache_log[0]["action"].startswith("save slot")
        app.invoke(Command(resume="add an apology"), thread("r1"))
        assert [e["decision"] for e in app.cache_log] == ["suspend", "restore"]
        (before,), (after,) = (row.record.calls for row in app.report.rows(thread_id="r1"))
        # the resumed call extends the saved context: its whole prefix is found cached
        assert after.slot != before.slot or after.cached_tokens > 0
        assert after.cached_tokens >= before.prompt_tokens > before.cached_tokens
        app.end_thread("r1")


def test_customer_support_langgraph_example_on_llama_cpp(llama_engine: LocalEngine) -> None:
    from examples import langgraph_support

    local = orla.backends.llamacpp("local", url=llama_engine.url)
    mapping = {name: f"local/{orla.backends.DEFAULT_LOCAL_MODEL}" for name in ("light", "heavy")}
    with orla.serve(langgraph_support.build_graph(), backends=[local], mapping=mapping) as app:
        state = app.invoke({"ticket": langgraph_support.SAMPLE_TICKET}, thread("ticket"))
        report = app.report.to_json()
    assert isinstance(state["triage"], langgraph_support.Triage)
    assert state["answer"]
    branch = "acknowledge" if state["triage"].needs_escalation else "reply"
    assert set(report["by_node"]) == {"classify", "policy_check", "route_ticket", branch}
    for totals in report["by_node"].values():
        assert totals["calls"] == 1 and totals["prompt_tokens"] > 0
    assert report["by_thread_id"]["ticket"]["calls"] == 4


WRITER = "You are the writer of a support team. " + "Write short, plain replies. " * 12
CRITIC = "You are the critic of a support team. " + "Point out one flaw in the reply. " * 12


class Turns(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    turn: int


def two_agent_thread(llm: Any, rounds: int = 3) -> Any:
    """A writer and a critic with system prompts of their own, taking turns on one
    conversation: each agent's next prompt extends its own last one, not the other's."""
    def agent(system: str) -> Any:
        def speak(state: Turns) -> dict[str, Any]:
            reply = llm.invoke([("system", system), *state["messages"]])
            return {"messages": [("user", str(reply.content))], "turn": state["turn"] + 1}
        return speak

    graph = StateGraph(Turns)
    graph.add_node("writer", agent(WRITER))
    graph.add_node("critic", agent(CRITIC))
    graph.add_edge(START, "writer")
    graph.add_edge("writer", "critic")
    graph.add_conditional_edges("critic", lambda s: END if s["turn"] >= 2 * rounds else "writer")
    return graph.compile()


def test_agents_own_their_cache_so_a_served_thread_caches_as_much_as_bare(
        llama_engine: LocalEngine) -> None:
    """Two agents on one thread: served, each holds a slot of its own (by its context),
    so neither evicts the other's prefix; llama.cpp alone picks slots by similarity."""
    start = {"messages": [("user", "A customer was charged twice.")], "turn": 0}
    engine_llm = ChatOpenAI(model="any", api_key="unused", base_url=f"{llama_engine.url}/v1",
                            max_retries=0, max_tokens=8, temperature=0)
    bare_cached: list[int] = []

    class Recorded:  # the bare app's model, noting what llama.cpp found cached
        def invoke(self, messages: Any) -> Any:
            reply = engine_llm.invoke(messages)
            details = (reply.usage_metadata or {}).get("input_token_details") or {}
            bare_cached.append(int(details.get("cache_read") or 0))
            return reply

    erase_slots(llama_engine)
    two_agent_thread(Recorded()).invoke(start)
    erase_slots(llama_engine)
    local = orla.backends.llamacpp("local", url=llama_engine.url)
    target = orla.Target(backend="local", model=orla.backends.DEFAULT_LOCAL_MODEL,
                         params={"max_tokens": 8, "temperature": 0})
    app_llm = ChatOpenAI(model="any", api_key="unused", base_url=NOWHERE, max_retries=0,
                         max_tokens=8, temperature=0)
    with orla.serve(two_agent_thread(app_llm), backends=[local], mapping={"agent": target},
                    default_model="agent") as app:
        app.invoke(start, thread("two-agents"))
        calls = [c for row in app.report.rows() for c in row.record.calls]
        slots = {row.labels["node"]: {c.slot for c in row.record.calls}
                 for row in app.report.rows()}
    served_cached = [c.cached_tokens for c in calls]
    assert len(served_cached) == len(bare_cached) == 6
    assert slots["writer"].isdisjoint(slots["critic"])  # a slot each, call after call
    assert sum(served_cached[2:]) >= sum(bare_cached[2:]) > 0


def erase_slots(engine: LocalEngine) -> None:
    import httpx

    for slot in range(2):
        httpx.post(f"{engine.url}/slots/{slot}", params={"action": "erase"}, timeout=10)


def test_an_invocation_without_a_thread_is_in_the_cache_log_once_its_end_is_waited_for(
        ) -> None:
    with orla.serve(support_graph(), backends=BACKENDS, mapping=MAPPING) as app:
        for _ in range(3):  # ended in the background: the caller does not wait for it
            app.invoke({"ticket": "A long ticket about a double charge. " * 8})
        app.session.wait_ended()
        assert not app.session._ending
        # each run's end is logged: the first leaves classify's slot holding its template,
        # which the next runs start from, with nothing to restore, and leave there again
        assert [(e["decision"], e["action"].split(" (")[0], e["thread_id"])
                for e in app.cache_log] == [
            ("keep", "save slot 0 as classify's template", None),
            *[("restore", "none: slot 0 holds classify's template already", None),
              ("flush", "restore classify's template into slot 0", None)] * 2]
