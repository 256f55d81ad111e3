"""Which target serves a stage's call: the stage's mapped target, the answer of its mapper
(asked once, on the stage's first call), or an alternative whose queue is under its bound
when the target's queue is over its."""

from __future__ import annotations

from typing import Any

from orla_sdk.backends.base import ChatRequest
from orla_sdk.errors import OrlaError
from orla_sdk.ir import MapperSpec, Target
from orla_sdk.mapping import StageMapper
from orla_sdk.runtime.call import call_model
from orla_sdk.runtime.context import StageContext


async def stage_target(ctx: StageContext, messages: list[dict[str, Any]]) -> Target:
    """The stage's target; a routed stage asks its mapper once, on its first call."""
    spec = ctx.mapper()
    if spec is not None:
        mapper: StageMapper = ctx.run.plan.resolve(spec.ref).model_validate(spec.config)
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        ctx.routed_to = await mapper.choose(prompt, lambda name, text: _ask(ctx, name, text))
        ctx.record.routed_to = ctx.routed_to
    target = ready_target(ctx)
    assert target is not None, "the mapper was asked: routed_to is set"
    return target


def ready_target(ctx: StageContext) -> Target | None:
    """The stage's target where no mapper is left to ask (one lookup: it runs on every
    call); None where the stage's mapper must be asked first (``stage_target``)."""
    mapped = ctx.mapped()
    if isinstance(mapped, MapperSpec) and ctx.routed_to is None:
        return None
    if not isinstance(mapped, Target):
        raise OrlaError(f"stage {ctx.spec.name!r}: {ctx.routed_to or ctx.logical_model()!r} "
                        "is not mapped to a backend and model.")
    return _reroute(ctx, mapped)


def _reroute(ctx: StageContext, target: Target) -> Target:
    """The first alternative under its queue bound, when the target's queue is over its."""
    pool = ctx.run.pool
    if not ctx.spec.alternatives or not pool[target.backend].queue.over_bound():
        return target
    for name in ctx.spec.alternatives:
        alternative = ctx.run.plan.mapping.get(name)
        if isinstance(alternative, Target) and not pool[alternative.backend].queue.over_bound():
            ctx.record.rerouted_to = name
            return alternative
    return target


async def _ask(ctx: StageContext, name: str, text: str) -> str:
    target = ctx.run.plan.mapping.get(name)
    if not isinstance(target, Target):
        raise OrlaError(f"stage {ctx.spec.name!r}: the mapper asked {name!r}, which is not "
                        "mapped to a backend and model.")
    request = ChatRequest(model=target.model, messages=[{"role": "user", "content": text}],
                          params={**target.params, "max_tokens": 8}, priority=ctx.priority)
    result = await call_model(ctx, ctx.run.pool[target.backend], target, request)
    return result.content
