"""A serving session: orla's runtime beneath another framework's app.

A LangGraph graph or an AutoGen team runs its own control flow; orla serves its model
calls. The session owns what that takes:

- a ``BackendPool`` (queues, cache slots, embedded engines) on an event loop of its own,
  in a daemon thread, so that sync and async callers, in any thread, share one runtime;
- one ``RunState`` per run: a LangGraph thread, an AutoGen team run. A run keeps its
  cache slot between calls, so every call of a thread extends the context cached there;
- one ``StageContext`` per unit of work (a graph task, an agent's turn), so that a call
  made there is queued with the unit's priority and recorded in its ``StageRecord``;
- the ``Report`` those records go to.

``close()`` settles every run and stops the engines and the loop. A session dropped, or
left open when the interpreter exits, is closed by a finalizer as far as that can be done
safely there: its engines and its loop stop (the runs' caches go with the engines).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from orla_sdk.agents import AgentPolicy
from orla_sdk.errors import OrlaError
from orla_sdk.ir import Node, Plan, PriorityNote, StageSpec, priority_of
from orla_sdk.loop_thread import LoopThread
from orla_sdk.runtime.context import RunState, StageContext
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.runtime.records import CacheLogEntry, StageRecord, failed_cache_action
from orla_sdk.serving.report import Labels, Report

T = TypeVar("T")
Outcome = Literal["idle", "paused", "over"]
AD_HOC_REF = "orla_sdk.serving.session:ad_hoc"

log = logging.getLogger("orla_sdk.serving")


@dataclass
class _Run:
    state: RunState
    units: dict[str, StageContext] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)  # unit key -> its step, if ordered
    finished: list[StageContext] = field(default_factory=list)  # cache decisions pending
    cache_log: list[CacheLogEntry] = field(default_factory=list)  # since the last settle
    deciding: asyncio.Lock = field(default_factory=asyncio.Lock)


class ServingSession:
    """The runtime one served app uses. ``close()`` stops its engines and its loop."""

    def __init__(self, plan: Plan, *, pool: BackendPool | None = None,
                 models: Mapping[str, str] | None = None, report: Report | None = None,
                 policies: Sequence[AgentPolicy | str] = ()) -> None:
        self.plan = plan
        if pool is not None and policies:
            raise OrlaError("give the agent policies to your BackendPool(policies=...), not "
                            "beside a pool of your own")
        self.pool = pool or BackendPool(plan.backends, policies=policies)
        self.models = dict(models or {})  # logical models of units the plan has no node for
        self.report = report or Report()
        self._nodes = {node.id: node for node in plan.nodes}
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._ending: set[Future[None]] = set()
        self._thread = LoopThread(f"orla-serve-{plan.name}")
        self._finalizer = weakref.finalize(self, _abandoned, self._thread, self.pool)

    # ---- the loop ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread and the pool (its engines) once; safe from any thread."""
        with self._lock:
            if not self._finalizer.alive:  # opened again after close()
                self._finalizer = weakref.finalize(self, _abandoned, self._thread, self.pool)
            self._thread.start()
            if not self.pool.started:
                self.call(self.pool.start())

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if not self._thread.running:
            raise RuntimeError("the serving session has not started")
        return self._thread.loop

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the session's loop and wait for it (from outside that loop)."""
        return self._thread.call(work)

    async def acall(self, work: Coroutine[Any, Any, T]) -> T:
        return await self._thread.acall(work)

    def end_soon(self, run_id: str,
                 logged: Callable[[list[CacheLogEntry]], None]) -> None:
        """Settle a finished run ``"over"`` without waiting for its cache actions (erasing
        or restoring slots): the caller's latency does not include them; ``logged`` gets
        them."""
        async def end() -> None:
            try:
                entries = await self.settle(run_id, "over")
            except Exception as exc:
                entries = [failed_cache_action(exc)]
            try:
                logged(entries)
            except Exception as exc:  # nobody awaits this: say so rather than lose it
                log.warning("run %s ended, but recording its cache actions failed: %s: %s",
                            run_id, type(exc).__name__, exc)

        def done(future: Future[None]) -> None:
            with self._lock:
                self._ending.discard(future)

        future = self._thread.submit(end())
        with self._lock:
            self._ending.add(future)
        future.add_done_callback(done)

    def close(self) -> None:
        """End every run (what their slots hold is dropped), stop the engines, then the
        loop. Best effort: whatever fails (an engine that died cannot erase a slot) is
        logged, the engines and the loop stop whatever happens, and nothing is raised, so
        closing never hides the error an app is already raising."""
        self._finalizer.detach()
        if not self._thread.running:
            return
        try:
            try:
                self._settle_all()
            finally:
                self._close_pool()
        finally:
            self._thread.stop()

    def wait_ended(self) -> None:
        """Wait until the runs ended with ``end_soon`` so far are settled and logged."""
        with self._lock:
            ending = list(self._ending)
        for future in ending:
            with contextlib.suppress(CancelledError):  # the loop stopped: nothing to wait for
                future.exception()  # waits; a failure was logged already

    def _settle_all(self) -> None:
        self.wait_ended()
        for run_id in list(self._runs):
            try:
                self.call(self.settle(run_id, "over"))
            except Exception as exc:
                log.warning("closing the serving session of %r: run %s did not end cleanly "
                            "(%s: %s); its engines stop anyway", self.plan.name, run_id,
                            type(exc).__name__, exc)

    def _close_pool(self) -> None:
        try:
            self.call(self.pool.aclose())
        except Exception as exc:
            log.warning("closing the serving session of %r: its backends did not close "
                        "cleanly (%s: %s)", self.plan.name, type(exc).__name__, exc)

    # ---- runs and units of work --------------------------------------------------------
    def unit(self, run_id: str, key: str, node_id: str, labels: Labels,
             step: int | None = None) -> StageContext:
        """The stage context of one unit of work of ``run_id``, made on first use.

        ``node_id`` is the plan node the unit runs (a node the plan lacks, such as a
        functional-API task, runs as an ad hoc stage of that name). Units given a ``step``
        are ordered: the first unit of a later step finishes those of earlier ones, whose
        hinted cache decisions the run's next call then carries out.
        """
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                run = self._runs[run_id] = self._new_run(run_id)
            ctx = run.units.get(key)
            if ctx is None:
                if step is not None:
                    _finish_steps_before(run, step)
                    run.steps[key] = step
                ctx = run.units[key] = self._new_unit(run.state, node_id, labels)
            return ctx

    def _new_run(self, run_id: str) -> _Run:
        run = _Run(RunState(run_id, self.plan, self.pool, self.loop))
        run.state.before_call = functools.partial(self._decide_finished, run)
        return run

    def _new_unit(self, state: RunState, node_id: str, labels: Labels) -> StageContext:
        planned = self._nodes.get(node_id)
        if planned is None or planned.stage is None:  # ad hoc: its enclosing node's priority
            planned = self._enclosing(node_id)
            node, spec = self._ad_hoc(node_id, planned, labels)
        else:
            node, spec = planned, self.plan.stage_of(planned)
        record = StageRecord(node.id, spec.name)
        self.report.add(record, labels)
        note = (planned and priority_of(planned)) or PriorityNote(source="graph")
        priority = labels.get("priority")
        if not isinstance(priority, int):
            priority = note.value
        return StageContext(state, node, spec, record, priority, note.critical_path)

    def _ad_hoc(self, node_id: str, enclosing: Node | None,
                labels: Labels) -> tuple[Node, StageSpec]:
        """A unit the plan has no node for (a functional-API task, a sub-agent the graph
        did not show): its model is ``models[name]``, else that of the plan node that
        encloses it (``node:task``), else the plan's default."""
        name = node_id.rsplit(":", 1)[-1]
        inherited = self.plan.stage_of(enclosing).model if enclosing is not None else None
        agent = labels.get("agent")
        spec = StageSpec(name=name, ref=AD_HOC_REF, model=self.models.get(name) or inherited,
                         agent=agent if isinstance(agent, str) and agent else None)
        return Node(id=node_id, kind="stage", label=name), spec

    def _enclosing(self, node_id: str) -> Node | None:
        """The nearest plan stage whose id is a ``:``-prefix of ``node_id``."""
        parts = node_id.split(":")
        for size in range(len(parts) - 1, 0, -1):
            node = self._nodes.get(":".join(parts[:size]))
            if node is not None and node.stage is not None:
                return node
        return None

    def finish_units(self, run_id: str) -> None:
        """The run's units are over (their records stay in the report); their hinted
        cache decisions are carried out when the run settles."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                run.finished += run.units.values()
                run.units.clear()
                run.steps.clear()

    async def _decide_finished(self, run: _Run) -> None:
        """Carry out the cache decisions that finished units were hinted with (``cache=``
        on the node). Unhinted units leave the run's context as it is: a served run, a
        LangGraph thread, goes on past the plan's end, so the plan's own end-of-workflow
        flushes are not its to make. The lock keeps a concurrent call of the run from
        pinning a slot that a decision is about to release."""
        if not run.finished and not run.deciding.locked():
            return  # the common case: every call of a run passes here
        async with run.deciding:
            with self._lock:
                finished, run.finished = run.finished, []
            for ctx in finished:
                if ctx.spec.cache is None:
                    continue
                entry = await self.pool.memory.stage_done(run.state.run_id, ctx.node,
                                                          ctx.record, hinted=True)
                if entry is not None:
                    run.cache_log.append(entry)

    async def settle(self, run_id: str, outcome: Outcome) -> list[CacheLogEntry]:
        """What becomes of a run's cache when the app hands control back: ``"idle"`` keeps
        its slot for the next call (lent to others meanwhile if they need it), ``"paused"``
        saves and frees it until the run resumes, ``"over"`` drops all it holds. Returns
        the cache actions taken for the run since the last settle."""
        memory = self.pool.memory
        run = self._runs.get(run_id)
        entries = []
        if run is not None:
            await self._decide_finished(run)
            entries, run.cache_log = run.cache_log, []
        entries += memory.take_log(run_id)
        if outcome == "paused":
            entries += await memory.suspend(run_id)
        elif outcome == "over":
            with self._lock:
                self._runs.pop(run_id, None)
            entries += await memory.end_run(run_id)
            self.pool.end_run(run_id)
        return entries


def _abandoned(thread: LoopThread, pool: BackendPool) -> None:
    """A session dropped, or left open at exit, without ``close()``: stop the engines its
    pool started and its loop. Runs are not settled: their caches die with the engines."""
    for connection in list(pool.connections.values()):
        if connection.engine is not None:
            connection.engine.stop()
    if not thread.running:
        return
    if thread.in_loop():  # dropped by code running on the loop itself: it cannot wait
        thread.loop.call_soon(thread.loop.stop)
        return
    try:
        thread.stop()
    except Exception as exc:  # at exit, or in the garbage collector: nobody to raise to
        log.warning("an abandoned serving session's loop did not stop: %s: %s",
                    type(exc).__name__, exc)


def _finish_steps_before(run: _Run, step: int) -> None:
    for key in [key for key, begun in run.steps.items() if begun < step]:
        run.finished.append(run.units.pop(key))
        del run.steps[key]


def ad_hoc(*inputs: Any) -> Any:
    """The body of a unit of work the plan has no node for: never called by orla."""
    raise RuntimeError("an ad hoc serving unit has no body of its own")
