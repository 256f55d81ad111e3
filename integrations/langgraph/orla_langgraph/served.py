"""``orla.serve(graph)``: orla as the serving layer beneath a compiled LangGraph graph.

    app = orla.serve(graph, backends=[...], mapping={"light": ..., "heavy": ...})
    app.invoke({"messages": [...]}, {"configurable": {"thread_id": "t1"}})
    app.report.to_json()

The served graph is used like the graph: ``invoke``, ``ainvoke``, ``stream`` and
``astream`` (every stream mode), ``batch``, checkpointers, ``interrupt()`` and
``Command(resume=...)``; anything else (``get_state``, ``get_graph``, ...) is the graph's.

- The graph's topology becomes an orla plan (``orla.plan_from_graph``), so each node gets
  its logical model (``add_node(..., metadata={"orla": {"model": "light"}})`` or
  ``models={"node": "light"}``), a priority and a cache decision from the passes.
- Each invocation carries an ``Invocation`` in its config's ``configurable``; LangGraph
  hands that config to every node, task and subgraph. A chat completion made with the
  ``openai`` SDK inside one of them (``ChatOpenAI``, ``init_chat_model``, a plain client;
  see ``openai_routing``) is attributed to (graph, thread_id, node, step) and served by
  the node's backend and model, in its queue with the node's priority, on the thread's
  cache slot. No node is rewritten.
- A thread is one orla run: its slot outlives an invocation, so each turn extends the
  context cached by the last. An invocation that stops at ``interrupt()`` saves and frees
  the thread's slot; the resumed invocation's first call restores it. An invocation
  without a ``thread_id`` is a run of its own, dropped when it returns.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from langgraph.config import get_config

from orla_sdk import Plan, Report
from orla_sdk.runtime import CacheLogEntry, StageContext
from orla_sdk.serving import Outcome, ServingSession, route_openai_calls

INVOCATION_KEY = "__orla_invocation"  # LangGraph keeps "__" keys out of checkpoint metadata


@dataclass(frozen=True)
class Invocation:
    """One call of ``invoke``/``stream`` on a served graph."""

    served: ServedGraph
    id: str
    run_id: str
    thread_id: str | None


class ServedGraph:
    """A compiled LangGraph graph whose model calls orla serves."""

    def __init__(self, graph: Any, session: ServingSession, *, name: str,
                 tracer: Any = None) -> None:
        self.graph = graph
        self.session = session
        self.name = name
        self.tracer = tracer  # an OpenTelemetry Tracer: each invocation's spans go there
        self.cache_log: list[dict[str, Any]] = []  # CacheLogEntry items with their thread_id
        route_openai_calls(_unit_of_current_task)

    @property
    def plan(self) -> Plan:
        return self.session.plan

    @property
    def report(self) -> Report:
        return self.session.report

    # ---- the graph's API ---------------------------------------------------------------
    def invoke(self, input: Any, config: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Any:
        invocation, config = self._begin(config)
        outcome = _unfinished(invocation)
        try:
            result = self.graph.invoke(input, config, **kwargs)
            outcome = self._outcome(invocation, config)
            return result
        finally:
            self._end(invocation, outcome)

    async def ainvoke(self, input: Any, config: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> Any:
        invocation, config = await self._abegin(config)
        outcome = _unfinished(invocation)
        try:
            result = await self.graph.ainvoke(input, config, **kwargs)
            outcome = await self._aoutcome(invocation, config)
            return result
        finally:
            await self._aend(invocation, outcome)

    def stream(self, input: Any, config: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Iterator[Any]:
        invocation, config = self._begin(config)
        outcome = _unfinished(invocation)
        try:
            yield from self.graph.stream(input, config, **kwargs)
            outcome = self._outcome(invocation, config)
        finally:
            self._end(invocation, outcome)

    async def astream(self, input: Any, config: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> AsyncIterator[Any]:
        invocation, config = await self._abegin(config)
        outcome = _unfinished(invocation)
        try:
            async for chunk in self.graph.astream(input, config, **kwargs):
                yield chunk
            outcome = await self._aoutcome(invocation, config)
        finally:
            await self._aend(invocation, outcome)

    def batch(self, inputs: Sequence[Any],
              config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
              **kwargs: Any) -> list[Any]:
        """The inputs invoked concurrently (each one a run unless its config names a thread)."""
        configs = _configs(config, len(inputs))
        with ThreadPoolExecutor(min(16, max(1, len(inputs)))) as threads:
            return list(threads.map(lambda i, c: self.invoke(i, c, **kwargs), inputs, configs))

    async def abatch(self, inputs: Sequence[Any],
                     config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                     **kwargs: Any) -> list[Any]:
        configs = _configs(config, len(inputs))
        return list(await asyncio.gather(*(self.ainvoke(i, c, **kwargs)
                                           for i, c in zip(inputs, configs, strict=True))))

    def with_config(self, config: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> ServedGraph:
        """The graph's ``with_config``, still served by this graph's session."""
        return ServedGraph(self.graph.with_config(config, **kwargs), self.session,
                           name=self.name, tracer=self.tracer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.graph, name)

    # ---- orla's side -------------------------------------------------------------------
    def end_thread(self, thread_id: str) -> list[CacheLogEntry]:
        """The conversation is over: drop what its run holds in the engines."""
        self.session.start()
        entries = self.session.call(self.session.settle(self._run_id(thread_id), "over"))
        self._log(thread_id, entries)
        return entries

    def close(self) -> None:
        """Stop the session: its runs' slots are erased and its engines stopped."""
        self.session.close()

    def __enter__(self) -> ServedGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- invocations -------------------------------------------------------------------
    def _begin(self, config: Mapping[str, Any] | None) -> tuple[Invocation, dict[str, Any]]:
        self.session.start()
        return self._invocation(config)

    async def _abegin(self, config: Mapping[str, Any] | None
                      ) -> tuple[Invocation, dict[str, Any]]:
        if not self.session.pool.started:
            await asyncio.to_thread(self.session.start)
        return self._invocation(config)

    def _invocation(self, config: Mapping[str, Any] | None
                    ) -> tuple[Invocation, dict[str, Any]]:
        config = dict(config or {})
        configurable = dict(config.get("configurable") or {})
        thread = configurable.get("thread_id")
        thread_id = None if thread is None else str(thread)
        invocation = Invocation(self, uuid.uuid4().hex[:12],
                                self._run_id(thread_id or uuid.uuid4().hex[:12]), thread_id)
        configurable[INVOCATION_KEY] = invocation
        config["configurable"] = configurable
        return invocation, config

    def _run_id(self, thread_id: str) -> str:
        return f"{self.name}:{thread_id}"

    def _outcome(self, invocation: Invocation, config: dict[str, Any]) -> Outcome:
        if invocation.thread_id is None or self.graph.checkpointer is None:
            return "over"
        return "paused" if self.graph.get_state(config).interrupts else "idle"

    async def _aoutcome(self, invocation: Invocation, config: dict[str, Any]) -> Outcome:
        if invocation.thread_id is None or self.graph.checkpointer is None:
            return "over"
        return "paused" if (await self.graph.aget_state(config)).interrupts else "idle"

    def _end(self, invocation: Invocation, outcome: Outcome) -> None:
        if self._ended_soon(invocation, outcome):
            return
        entries = self.session.call(self.session.settle(invocation.run_id, outcome))
        self._log(invocation.thread_id, entries)

    async def _aend(self, invocation: Invocation, outcome: Outcome) -> None:
        if self._ended_soon(invocation, outcome):
            return
        entries = await self.session.acall(self.session.settle(invocation.run_id, outcome))
        self._log(invocation.thread_id, entries)

    def _ended_soon(self, invocation: Invocation, outcome: Outcome) -> bool:
        """Close the invocation's units and export its spans; a run that is over is
        settled in the background (its slot erase is not the caller's wait)."""
        self.session.finish_units(invocation.run_id)
        if self.tracer is not None:
            self.report.export_spans(self.tracer, invocation=invocation.id)
        if outcome != "over":
            return False
        self.session.end_soon(invocation.run_id,
                              lambda entries: self._log(invocation.thread_id, entries))
        return True

    def _log(self, thread_id: str | None, entries: list[CacheLogEntry]) -> None:
        self.cache_log += [{**dict(entry), "thread_id": thread_id} for entry in entries]

    def unit(self, invocation: Invocation, config: Mapping[str, Any]) -> StageContext:
        """The stage context of the task that ``config`` belongs to."""
        metadata = config.get("metadata") or {}
        namespace = str(metadata.get("langgraph_checkpoint_ns")
                        or metadata.get("langgraph_node") or "")
        names = [part.split(":", 1)[0] for part in namespace.split("|")]
        node_id = ":".join(names)
        step = metadata.get("langgraph_step")
        labels = {"graph": self.name, "thread_id": invocation.thread_id, "node": node_id,
                  "step": step, "task": namespace, "invocation": invocation.id}
        # the graph's supersteps order its own tasks; a subgraph's tasks count steps of
        # their own, so they finish with the invocation
        ordered = step if isinstance(step, int) and "|" not in namespace else None
        return self.session.unit(invocation.run_id, namespace, node_id, labels, ordered)


def _unit_of_current_task() -> StageContext | None:
    """The served unit a chat completion is made in, from LangGraph's current config."""
    try:
        config = get_config()
    except RuntimeError:  # not inside a LangGraph run
        return None
    invocation = (config.get("configurable") or {}).get(INVOCATION_KEY)
    if not isinstance(invocation, Invocation):
        return None
    return invocation.served.unit(invocation, config)


def _unfinished(invocation: Invocation) -> Outcome:
    """What a thread's cache becomes when its invocation fails or is closed early: kept,
    since the thread may go on; a run without a thread is over either way."""
    return "over" if invocation.thread_id is None else "idle"


def _configs(config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
             count: int) -> list[Mapping[str, Any] | None]:
    if isinstance(config, Sequence):
        return list(config)
    return [config] * count
