"""Chat completions made with the ``openai`` SDK inside a served app, served by orla.

Frameworks reach models through the ``openai`` SDK: LangChain's ``ChatOpenAI`` and
``init_chat_model("openai:...")`` and plain ``openai`` clients all end in
``client.chat.completions.create`` (or ``parse``, which structured output uses; ``stream``
calls ``create``). ``route_openai_calls()`` wraps those two methods of the SDK's sync and async
completions resources, once, in the way OpenTelemetry's instrumentations do. A wrapped
call asks each registered resolver for the orla stage context it is made in; outside a
served app there is none and the call goes on unchanged. Inside one, it goes to a copy
of the client whose HTTP transport is orla's (see ``runtime/openai_shim.py``): the unit's
backend and model, its queue turn and priority, its run's cache slot and its record.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

from orla_sdk.errors import OrlaError
from orla_sdk.runtime.call import in_loop_thread
from orla_sdk.runtime.context import StageContext, current_stage
from orla_sdk.runtime.openai_shim import wrap

Resolver = Callable[[], StageContext | None]
ROUTED_METHODS = ("create", "parse")

_resolvers: list[Resolver] = []
_routed_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_installed = False


def route_openai_calls(resolver: Resolver) -> None:
    """Route SDK calls for which ``resolver`` names a stage context (idempotent)."""
    global _installed
    with _lock:
        if resolver not in _resolvers:
            _resolvers.append(resolver)
        if _installed:
            return
        from openai.resources.chat.completions import AsyncCompletions, Completions

        for name in ROUTED_METHODS:
            setattr(Completions, name, _sync_method(getattr(Completions, name)))
            setattr(AsyncCompletions, name, _async_method(getattr(AsyncCompletions, name)))
        _installed = True


def resolve() -> StageContext | None:
    for resolver in _resolvers:
        ctx = resolver()
        if ctx is not None:
            # orla's own engine calls run on the run's loop (with the caller's context
            # variables, which asyncio copies there): they go to the engine itself
            return None if in_loop_thread(ctx) else _with_model(ctx)
    return None


def _with_model(ctx: StageContext) -> StageContext:
    if ctx.spec.model is None and ctx.run.plan.default_model is None:
        raise OrlaError(f"{ctx.node.id!r} made a chat completion but has no orla model; give "
                        f"it one with orla.serve(..., models={{{ctx.spec.name!r}: ...}}) or the "
                        "orla metadata its integration reads (docs/serving.md), or pass "
                        "default_model=... to orla.serve.")
    return ctx


def _sync_method(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = resolve()
        if ctx is None:
            return original(self, *args, **kwargs)
        token = current_stage.set(ctx)
        try:
            return original(type(self)(_routed(self._client)), *args, **kwargs)
        finally:
            current_stage.reset(token)

    return method


def _async_method(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = resolve()
        if ctx is None:
            return await original(self, *args, **kwargs)
        token = current_stage.set(ctx)
        try:
            return await original(type(self)(_routed(self._client)), *args, **kwargs)
        finally:
            current_stage.reset(token)

    return method


def _routed(client: Any) -> Any:
    """The orla-served copy of ``client``, made once per client."""
    with _lock:
        routed = _routed_clients.get(client)
        if routed is None:
            routed = _routed_clients[client] = wrap(client)
        return routed
