"""Running the tools a model calls: arguments checked against the tool's signature, a
deadline on every call, failures (even ``sys.exit``) turned into messages the model can
read, long results cut, and tools with effects called at most once per call key.

A plain (blocking) tool runs on a thread of its own. A call past its deadline is
abandoned: its thread finishes in the background, and its place among the pool's
``tool_threads`` concurrent calls is given back, so hung tools never starve the others.
A tool with effects that passes its deadline may still take effect: that is recorded as
its result, and it is not called again with the same arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from orla_sdk.agents import AgentEvent, AgentEventKind, AgentKey, AgentLayer
from orla_sdk.agents.policy import Admission, ToolUse
from orla_sdk.backends.base import ToolCall
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.ir import ToolSpec
from orla_sdk.runtime.checkpoint import Durable
from orla_sdk.runtime.off_loop import thread_context
from orla_sdk.runtime.records import StageRecord
from orla_sdk.signatures import IDEMPOTENCY_KEY, arguments_model

TOOL_TIMEOUT_S = 60.0
MAX_RESULT_CHARS = 16_000


Status = Literal["ok", "failed", "timeout"]


@dataclass
class ToolRunner:
    """The tools of one stage, run as its model calls them.

    ``specs`` declares each tool (effects, purity); ``limit`` bounds the tool calls in
    flight (the pool's). With an agent ``layer``, each call is first offered to its
    policies (``admit`` may refuse it, ``tool_result`` may answer it from an equal earlier
    call), and its start and end are observed, timed by ``now``; ``record`` counts them.
    A plain tool holds ``clock`` while it runs on its thread (``orla_sdk.runtime.off_loop``).
    """

    tools: dict[str, Callable[..., Any]]
    specs: dict[str, ToolSpec] = field(default_factory=dict)
    limit: asyncio.Semaphore | None = None
    timeout: float = TOOL_TIMEOUT_S
    durable: Durable | None = None
    run_id: str = ""
    layer: AgentLayer | None = None
    agent: AgentKey = field(default_factory=lambda: AgentKey("", ""))
    record: StageRecord | None = None
    now: Callable[[], float] = time.monotonic
    clock: VirtualClock = field(default_factory=VirtualClock)  # held while a tool runs
    # calls of tools with effects that passed their deadline, by (tool, arguments): they
    # may still take effect, so they are not made again
    in_doubt: dict[tuple[str, str], str] = field(default_factory=dict)

    async def run(self, call: ToolCall, key: str = "") -> str:
        """Run one tool call; every failure becomes a message the model can read. ``key``
        names the call of a tool with effects (see ``orla_sdk.runtime.checkpoint``)."""
        fn = self.tools.get(call.name)
        if fn is None:
            return (f"error: there is no tool named {call.name!r}; the tools are "
                    f"{sorted(self.tools)}")
        try:
            arguments = _checked_arguments(fn, call)
        except ValueError as exc:
            return f"error: the arguments of {call.name} are not valid: {exc}"
        canonical = json.dumps(arguments, sort_keys=True, default=str)
        answered = self._answered_by_policies(call.name, canonical)
        if answered is not None:
            return answered
        observed = self.layer is not None and self.layer.observing
        if observed:
            self._observe("tool_started", tool=call.name)
        started = self.now()
        if self._spec(call.name).effect:
            result, status = await self._run_once(fn, call.name, arguments, canonical, key)
        else:
            result, status = await self._outcome(fn, call.name, arguments)
        if observed:
            self._observe("tool_ended", tool=call.name, duration_s=self.now() - started,
                          arguments=canonical, result=result, failed=status != "ok")
        self._count("tool_calls")
        return result

    def _answered_by_policies(self, name: str, arguments: str) -> str | None:
        """A refusal, or an equal earlier call's result, from the agent layer (asked only
        where one of its policies answers such questions: this runs for every tool call)."""
        layer = self.layer
        if layer is None:
            return None
        if layer.implementing("admit"):
            refusal = layer.admit(Admission("tool", self.agent, tool=name))
            if refusal is not None:
                self._observe("refused", tool=name, rule=refusal)
                self._count("refused")
                return f"error: the call of {name} was refused: {refusal}"
        if not layer.implementing("tool_result"):
            return None
        spec = self._spec(name)
        reused = layer.tool_result(ToolUse(self.agent, name, arguments, spec.pure,
                                           spec.ttl_s, spec.effect))
        if reused is not None and not spec.effect:
            self._observe("tool_reused", tool=name, arguments=arguments)
            self._count("tools_reused")
            return reused
        return None

    def _spec(self, name: str) -> ToolSpec:
        return self.specs.get(name) or ToolSpec(name=name, ref="")

    def _observe(self, kind: AgentEventKind, **data: Any) -> None:
        if self.layer is not None and self.layer.observing:
            self.layer.observe(AgentEvent(kind, self.agent, "", {**data, "at": self.now()}))

    def _count(self, what: Literal["tool_calls", "tools_reused", "refused"]) -> None:
        if self.record is not None:
            setattr(self.record, what, getattr(self.record, what) + 1)

    async def _run_once(self, fn: Callable[..., Any], name: str, arguments: dict[str, Any],
                        canonical: str, key: str) -> tuple[str, Status]:
        """A call of a tool with effects: at most once per key, recorded before the model
        sees its result."""
        if (doubt := self.in_doubt.get((name, canonical))) is not None:
            return doubt, "failed"
        if self.durable is not None and (recorded := self.durable.effect(key)) is not None:
            return _replayed(name, canonical, *recorded), "ok"
        if IDEMPOTENCY_KEY in inspect.signature(fn).parameters:
            arguments = {**arguments, IDEMPOTENCY_KEY: f"{self.run_id}:{key}"}
        result, status = await self._outcome(fn, name, arguments)
        if status == "timeout":
            result = (f"error: {name} did not return within {self.timeout:g} s; it may still "
                      "take effect, so it is not called again with these arguments")
            self.in_doubt[(name, canonical)] = result
        if self.durable is not None:
            self.durable.save_effect(key, canonical, result)  # before the model sees it
        return result, status

    async def _outcome(self, fn: Callable[..., Any], name: str,
                       arguments: dict[str, Any]) -> tuple[str, Status]:
        """What to tell the model, and how the call went."""
        async with self.limit or contextlib.nullcontext():
            try:
                work = (_caught(fn(**arguments)) if inspect.iscoroutinefunction(fn)
                        else _in_own_thread(fn, arguments, self.clock))
                value, error = await asyncio.wait_for(work, self.timeout)
            except TimeoutError:
                return (f"error: {name} did not return within {self.timeout:g} s and was "
                        "abandoned; try another way, or answer without it"), "timeout"
        if isinstance(error, (SystemExit, KeyboardInterrupt)):
            return (f"error: {name} tried to stop the process ({type(error).__name__}); "
                    "it did not"), "failed"
        if error is not None:
            return f"error: {name} raised {type(error).__name__}: {error}", "failed"
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return _capped(text), "ok"


def _replayed(name: str, arguments: str, recorded_arguments: str, result: str) -> str:
    if recorded_arguments == arguments:
        return result
    return (f"error: this call of {name} was already made in an earlier attempt of this run, "
            f"with the arguments {recorded_arguments}, and returned: {result}. It is not made "
            "again.")


async def _caught(work: Awaitable[Any]) -> tuple[Any, BaseException | None]:
    """An async tool's value, or what it raised: even ``SystemExit`` stays with its call."""
    try:
        return await work, None
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return None, exc


def _in_own_thread(fn: Callable[..., Any], arguments: dict[str, Any],
                   clock: VirtualClock) -> asyncio.Future[tuple[Any, BaseException | None]]:
    """``fn(**arguments)`` on a daemon thread of its own while it runs (with the caller's
    context variables): its value, or what it raised (``SystemExit`` too: it belongs to
    the call, not the thread). ``clock`` stands still until the call is over or given up."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
    context, hold = thread_context(clock)
    future.add_done_callback(lambda _: hold.end())

    def work() -> None:
        threading.current_thread().name = f"orla-tool-{fn.__name__}"
        try:
            outcome: tuple[Any, BaseException | None] = (context.run(fn, **arguments), None)
        except BaseException as exc:
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, future, outcome)

    _workers.submit(work)
    return future


class _DaemonWorkers:
    """Daemon threads for tool calls, kept for the next call while idle (starting a thread
    costs about half a millisecond). A call takes an idle one or starts a new one, so a
    tool that hangs past its deadline holds its own thread only; a thread idle for
    ``IDLE_S`` ends."""

    IDLE_S = 30.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0  # idle threads no job has been handed to yet
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = not self._idle
            if not start:
                self._idle -= 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, daemon=True, name="orla-tool").start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody counts on this thread: it may end
                        self._idle -= 1
                        return
                continue  # a job was handed to it as it timed out
            job()
            with self._lock:
                self._idle += 1


_workers = _DaemonWorkers()


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if not future.done():
        future.set_result(outcome)


def _checked_arguments(fn: Callable[..., Any], call: ToolCall) -> dict[str, Any]:
    """The call's JSON arguments validated (and coerced) by the tool's type hints."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError as exc:
        raise ValueError(f"they are not JSON ({exc})") from None
    if not isinstance(arguments, dict):
        raise ValueError("they must be a JSON object")
    try:
        checked = arguments_model(fn).model_validate(arguments)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None
    return {name: getattr(checked, name) for name in arguments}


def _capped(result: str) -> str:
    if len(result) <= MAX_RESULT_CHARS:
        return result
    return (result[:MAX_RESULT_CHARS] + f"\n[orla cut this tool result at {MAX_RESULT_CHARS} "
            f"of {len(result)} characters]")
