"""The recorded model call: one call of a stage's backend through the pool's queue and
cache slot, with a ``CallRecord`` on the stage's record and its streamed text sent to
the caller and to the run's event listeners."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.ir import Target
from orla_sdk.runtime.context import StageContext
from orla_sdk.runtime.pool import LiveBackend
from orla_sdk.runtime.records import CallRecord


async def call_model(ctx: StageContext, live: LiveBackend, target: Target,
                     request: ChatRequest,
                     on_token: Callable[[str], None] | None = None) -> ChatResult:
    """Call the stage's backend through the pool (queue, slot, retries); record the call."""
    if ctx.run.before_call is not None:
        await ctx.run.before_call()
    sink = _token_sink(ctx, on_token or request.on_token)
    started_at = time.time()
    agent = ctx.agent_key(next(ctx.run.steps))
    ctx.record.agent = ctx.spec.agent or ""
    served = await ctx.run.pool.call(
        target.backend, request.evolve(on_token=sink, agent=agent), run_id=ctx.run.run_id,
        stage=ctx.spec.name, priority=ctx.priority, critical_path=ctx.critical_path,
        own_slot=ctx.spec.agent is not None)
    result = served.result
    call = CallRecord(
        backend=target.backend, model=target.model, prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens, cached_tokens=result.cached_tokens,
        queue_wait_s=served.queue_wait_s, ttft_s=result.ttft_s, duration_s=result.duration_s,
        slot=served.slot, started_at=started_at, attempts=served.attempts)
    ctx.record.calls.append(call)
    if ctx.run.emit.active:
        ctx.run.emit("call", ctx.node.id, stage=ctx.spec.name, item=ctx.record.item, call=call)
    return result


def _token_sink(ctx: StageContext, user: Callable[[str], None] | None
                ) -> Callable[[str], None] | None:
    """Where streamed text goes: the caller's callback and the run's event listener."""
    if not ctx.run.emit.active:
        return user
    return _TokenSink(ctx, user)


class _TokenSink:
    """Streamed text to the caller's callback and, as ``token`` events, to the run's
    listener (an object, not a closure: fewer objects for the garbage collector)."""

    __slots__ = ("ctx", "user")

    def __init__(self, ctx: StageContext, user: Callable[[str], None] | None) -> None:
        self.ctx, self.user = ctx, user

    def __call__(self, text: str) -> None:
        if self.user is not None:
            self.user(text)
        if text:  # an empty piece carries a reasoning model's thinking, not its text
            ctx = self.ctx
            ctx.run.emit("token", ctx.node.id, stage=ctx.spec.name, item=ctx.record.item,
                         text=text)


def in_loop_thread(ctx: StageContext) -> bool:
    try:
        return asyncio.get_running_loop() is ctx.run.loop
    except RuntimeError:
        return False
