"""``orla.serve(graph)``: orla as the serving layer beneath a compiled LangGraph graph.

    app = orla.serve(graph, backends=[...], mapping={"light": ..., "heavy": ...})
    app.invoke({"messages": [...]}, {"configurable": {"thread_id": "t1"}})
    app.report.to_json()

The served graph is used like the graph: every method that runs it (``RUN_METHODS``:
``invoke``, ``stream`` and ``astream`` in every stream mode, ``astream_events``, the
batches ...), checkpointers, ``interrupt()`` and ``Command(resume=...)``. Its state,
drawing and schema methods (``GRAPH_METHODS``) and attributes are the graph's; any other
method, one that would run the graph's nodes unserved, raises an ``OrlaError``.

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
import contextlib
import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.runnables.config import RunnableConfig, get_executor_for_config
from langchain_core.runnables.utils import gated_coro, gather_with_concurrency
from langgraph.config import get_config

from orla_langgraph.idle import IdleThreads
from orla_langgraph.threads import carry_invocations_into_thread_pools
from orla_sdk import OrlaError, Plan, Report
from orla_sdk.runtime import CacheLogEntry, StageContext, failed_cache_action
from orla_sdk.serving import Outcome, ServingSession, route_openai_calls

INVOCATION_KEY = "__orla_invocation"  # LangGraph keeps "__" keys out of checkpoint metadata
RUN_METHODS = ("invoke", "ainvoke", "stream", "astream", "astream_events", "astream_log",
               "batch", "abatch", "batch_as_completed", "abatch_as_completed")
# the graph's methods that read or write its state, draw it or describe it: they run no node
GRAPH_METHODS = frozenset({
    "get_state", "aget_state", "get_state_history", "aget_state_history", "update_state",
    "aupdate_state", "bulk_update_state", "abulk_update_state", "clear_cache",
    "aclear_cache", "get_graph", "aget_graph", "get_subgraphs", "aget_subgraphs",
    "get_name", "get_input_schema", "get_output_schema", "get_input_jsonschema",
    "get_output_jsonschema", "get_config_jsonschema", "get_context_jsonschema",
    "config_schema", "get_prompts", "validate"})

log = logging.getLogger("orla_langgraph")


@dataclass(eq=False)
class Invocation:
    """One call of ``invoke``/``stream`` on a served graph. Once ``ended``, a call still
    made in its context (from a thread it started that outlived it) is not its own."""

    served: ServedGraph
    id: str
    run_id: str
    thread_id: str | None
    ended: bool = False


class ServedGraph:
    """A compiled LangGraph graph whose model calls orla serves."""

    def __init__(self, graph: Any, session: ServingSession, *, name: str,
                 tracer: Any = None, idle: IdleThreads | None = None) -> None:
        self.graph = graph
        self.session = session
        self.name = name
        self.tracer = tracer  # an OpenTelemetry Tracer: each invocation's spans go there
        self.idle = idle or IdleThreads()  # threads quiet for idle.idle_s lose their runs
        self.cache_log: list[dict[str, Any]] = []  # CacheLogEntry items with their thread_id
        route_openai_calls(_unit_of_current_task)
        carry_invocations_into_thread_pools(_in_invocation)

    @property
    def plan(self) -> Plan:
        return self.session.plan

    @property
    def report(self) -> Report:
        return self.session.report

    # ---- the graph's API: every way of running it is served ----------------------------
    def invoke(self, input: Any, config: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Any:
        with self._served(config) as served_config:
            return self.graph.invoke(input, served_config, **kwargs)

    async def ainvoke(self, input: Any, config: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> Any:
        async with self._aserved(config) as served_config:
            return await self.graph.ainvoke(input, served_config, **kwargs)

    def stream(self, input: Any, config: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Iterator[Any]:
        with self._served(config) as served_config:
            yield from self.graph.stream(input, served_config, **kwargs)

    async def astream(self, input: Any, config: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> AsyncIterator[Any]:
        async with self._aserved(config) as served_config:
            async for chunk in self.graph.astream(input, served_config, **kwargs):
                yield chunk

    async def astream_events(self, input: Any, config: Mapping[str, Any] | None = None,
                             **kwargs: Any) -> AsyncIterator[Any]:
        async with self._aserved(config) as served_config:
            async for event in self.graph.astream_events(input, served_config, **kwargs):
                yield event

    async def astream_log(self, input: Any, config: Mapping[str, Any] | None = None,
                          **kwargs: Any) -> AsyncIterator[Any]:
        async with self._aserved(config) as served_config:
            async for patch in self.graph.astream_log(input, served_config, **kwargs):
                yield patch

    # the batches do what LangChain's Runnable batches do, with each invocation served
    def batch(self, inputs: Sequence[Any],
              config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """The inputs invoked concurrently (each one a run unless its config names a
        thread), in threads that carry the caller's context; results in input order."""
        configs = _configs(config, len(inputs))
        invoke = functools.partial(self._invoke_one, return_exceptions, kwargs)
        if len(inputs) <= 1:
            return [invoke(item, item_config)
                    for item, item_config in zip(inputs, configs, strict=True)]
        with get_executor_for_config(_runnable_config(configs[0])) as executor:
            return list(executor.map(invoke, inputs, configs))

    def batch_as_completed(self, inputs: Sequence[Any],
                           config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                           *, return_exceptions: bool = False,
                           **kwargs: Any) -> Iterator[tuple[int, Any]]:
        configs = _configs(config, len(inputs))
        invoke = functools.partial(self._invoke_one, return_exceptions, kwargs)
        if len(inputs) <= 1:
            yield from ((0, invoke(item, item_config))
                        for item, item_config in zip(inputs, configs, strict=True))
            return
        with get_executor_for_config(_runnable_config(configs[0])) as executor:
            futures = {executor.submit(invoke, item, item_config): index
                       for index, (item, item_config)
                       in enumerate(zip(inputs, configs, strict=True))}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:  # a failure, or a caller that stops early: the rest do not start
                for future in futures:
                    future.cancel()

    def _invoke_one(self, return_exceptions: bool, kwargs: Mapping[str, Any], item: Any,
                    config: Mapping[str, Any] | None) -> Any:
        try:
            return self.invoke(item, config, **kwargs)
        except Exception as exc:
            if not return_exceptions:
                raise
            return exc

    async def abatch(self, inputs: Sequence[Any],
                     config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        configs = _configs(config, len(inputs))
        calls = [self._ainvoke_one(return_exceptions, kwargs, item, item_config)
                 for item, item_config in zip(inputs, configs, strict=True)]
        limit = (configs[0] or {}).get("max_concurrency") if configs else None
        return await gather_with_concurrency(limit, *calls)

    async def abatch_as_completed(
            self, inputs: Sequence[Any],
            config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, *,
            return_exceptions: bool = False, **kwargs: Any) -> AsyncIterator[tuple[int, Any]]:
        configs = _configs(config, len(inputs))
        limit = (configs[0] or {}).get("max_concurrency") if configs else None
        gate = asyncio.Semaphore(limit) if limit else None

        async def numbered(index: int, item: Any, item_config: Any) -> tuple[int, Any]:
            call = self._ainvoke_one(return_exceptions, kwargs, item, item_config)
            return index, await (gated_coro(gate, call) if gate else call)

        for next_done in asyncio.as_completed(
                [numbered(index, item, item_config)
                 for index, (item, item_config) in enumerate(zip(inputs, configs, strict=True))]):
            yield await next_done

    async def _ainvoke_one(self, return_exceptions: bool, kwargs: Mapping[str, Any],
                           item: Any, config: Mapping[str, Any] | None) -> Any:
        try:
            return await self.ainvoke(item, config, **kwargs)
        except Exception as exc:
            if not return_exceptions:
                raise
            return exc

    def with_config(self, config: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> ServedGraph:
        """The graph's ``with_config``, still served by this graph's session."""
        return ServedGraph(self.graph.with_config(config, **kwargs), self.session,
                           name=self.name, tracer=self.tracer, idle=self.idle)

    def __getattr__(self, name: str) -> Any:
        """The graph's state, drawing and schema methods and its attributes; a method that
        would run the graph past orla is refused."""
        value = getattr(self.graph, name)
        if name.startswith("_") or name in GRAPH_METHODS or not inspect.ismethod(value):
            return value
        raise OrlaError(f"ServedGraph.{name}() would run the graph outside orla: its model "
                        "calls would go to the app's own endpoint, unserved and unreported. "
                        f"A served graph runs through {', '.join(RUN_METHODS)}; compose "
                        "around those calls, or serve the graph before composing it.")

    # ---- orla's side -------------------------------------------------------------------
    def end_thread(self, thread_id: str) -> list[CacheLogEntry]:
        """The conversation is over: drop what its run holds in the engines."""
        self.session.start()
        self.idle.forget(self._run_id(thread_id))
        entries = self.session.call(self.session.settle(self._run_id(thread_id), "over"))
        self._log(thread_id, entries)
        return entries

    def close(self) -> None:
        """Stop the session: its runs end (what their slots hold is dropped), its engines stop."""
        self.session.close()

    def __enter__(self) -> ServedGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- invocations -------------------------------------------------------------------
    @contextlib.contextmanager
    def _served(self, config: Mapping[str, Any] | None) -> Iterator[dict[str, Any]]:
        """One invocation: its config carries the ``Invocation`` to every node; when it
        ends, the thread's cache is settled by how it ended."""
        self.session.start()
        invocation, served_config = self._invocation(config)
        try:
            yield served_config
            outcome = self._outcome(invocation, served_config)
        except BaseException:
            self._end(invocation, self._unfinished(invocation), failing=True)
            raise
        self._end(invocation, outcome)

    @contextlib.asynccontextmanager
    async def _aserved(self, config: Mapping[str, Any] | None
                       ) -> AsyncIterator[dict[str, Any]]:
        if not self.session.pool.started:
            await asyncio.to_thread(self.session.start)
        invocation, served_config = self._invocation(config)
        try:
            yield served_config
            outcome = await self._aoutcome(invocation, served_config)
        except BaseException:
            await self._aend(invocation, self._unfinished(invocation), failing=True)
            raise
        await self._aend(invocation, outcome)

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
        for expired in self.idle.begin(invocation.run_id):
            thread_of_run = expired.removeprefix(f"{self.name}:")
            self.session.end_soon(expired, functools.partial(self._log, thread_of_run))
        return invocation, config

    def _run_id(self, thread_id: str) -> str:
        return f"{self.name}:{thread_id}"

    def _thread_goes_on(self, invocation: Invocation) -> bool:
        """Whether the thread can be invoked again (a checkpointer keeps its state): else
        its cache is dropped when the invocation ends."""
        return invocation.thread_id is not None and self.graph.checkpointer is not None

    def _unfinished(self, invocation: Invocation) -> Outcome:
        """What a thread's cache becomes when its invocation fails or is left early."""
        return "idle" if self._thread_goes_on(invocation) else "over"

    def _outcome(self, invocation: Invocation, config: dict[str, Any]) -> Outcome:
        if not self._thread_goes_on(invocation):
            return "over"
        return "paused" if self.graph.get_state(config).interrupts else "idle"

    async def _aoutcome(self, invocation: Invocation, config: dict[str, Any]) -> Outcome:
        if not self._thread_goes_on(invocation):
            return "over"
        return "paused" if (await self.graph.aget_state(config)).interrupts else "idle"

    def _end(self, invocation: Invocation, outcome: Outcome, failing: bool = False) -> None:
        if self._ended_soon(invocation, outcome):
            return
        try:
            entries = self.session.call(self.session.settle(invocation.run_id, outcome))
        except Exception as exc:
            entries = self._settle_failed(invocation, exc, failing)
        self._log(invocation.thread_id, entries)

    async def _aend(self, invocation: Invocation, outcome: Outcome,
                    failing: bool = False) -> None:
        if self._ended_soon(invocation, outcome):
            return
        try:
            entries = await self.session.acall(self.session.settle(invocation.run_id, outcome))
        except Exception as exc:
            entries = self._settle_failed(invocation, exc, failing)
        self._log(invocation.thread_id, entries)

    def _ended_soon(self, invocation: Invocation, outcome: Outcome) -> bool:
        """Close the invocation's units and export its spans; a run that is over is
        settled in the background (its cache actions are not the caller's wait)."""
        invocation.ended = True
        self.session.finish_units(invocation.run_id)
        self.idle.end(invocation.run_id, kept=outcome != "over")
        if self.tracer is not None:
            self.report.export_spans(self.tracer, invocation=invocation.id)
        if outcome != "over":
            return False
        self.session.end_soon(invocation.run_id,
                              lambda entries: self._log(invocation.thread_id, entries))
        return True

    def _log(self, thread_id: str | None, entries: list[CacheLogEntry]) -> None:
        self.cache_log += [{**dict(entry), "thread_id": thread_id} for entry in entries]

    def _settle_failed(self, invocation: Invocation, exc: Exception,
                       failing: bool) -> list[CacheLogEntry]:
        """Settling the thread's cache failed (its engine is down, say). The invocation's
        answer, or the error it is raising, is what the caller gets; the failure is
        logged and kept in the cache log."""
        log.warning("graph %r, thread %s: the cache could not be settled after the "
                    "invocation%s (%s: %s)", self.name, invocation.thread_id,
                    " failed" if failing else "", type(exc).__name__, exc)
        return [failed_cache_action(exc, decision="settle", reason="end of invocation")]

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
    current = _current_invocation()
    if current is None:
        return None
    invocation, config = current
    return invocation.served.unit(invocation, config)


def _in_invocation() -> bool:
    """Whether the code running now is part of a served invocation."""
    return _current_invocation() is not None


def _current_invocation() -> tuple[Invocation, Mapping[str, Any]] | None:
    try:
        config = get_config()
    except RuntimeError:  # not inside a LangGraph run
        return None
    invocation = (config.get("configurable") or {}).get(INVOCATION_KEY)
    if not isinstance(invocation, Invocation) or invocation.ended:
        return None
    return invocation, config


def _runnable_config(config: Mapping[str, Any] | None) -> RunnableConfig | None:
    return None if config is None else cast(RunnableConfig, dict(config))


def _configs(config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
             count: int) -> list[Mapping[str, Any] | None]:
    if isinstance(config, Sequence):
        if len(config) != count:
            raise ValueError(f"batch got {count} inputs and {len(config)} configs; give one "
                             "config, or one per input")
        return list(config)
    return [config] * count

