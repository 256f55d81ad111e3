"""Running the tools a model calls: arguments checked against the tool's signature, a
deadline on every call, failures (even ``sys.exit``) turned into messages the model can
read, long results cut, and tools with effects called at most once per call key.

A plain (blocking) tool runs on a thread of its own. A call past its deadline is
abandoned: its thread finishes in the background, and its place among the pool's
``tool_threads`` concurrent calls is given back, so hung tools never starve the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from orla_sdk.backends.base import ToolCall
from orla_sdk.runtime.checkpoint import Durable
from orla_sdk.signatures import IDEMPOTENCY_KEY, arguments_model

TOOL_TIMEOUT_S = 60.0
MAX_RESULT_CHARS = 16_000


async def run_tool(tools: dict[str, Callable[..., Any]], call: ToolCall, *,
                   limit: asyncio.Semaphore | None = None, timeout: float = TOOL_TIMEOUT_S,
                   effect: bool = False, durable: Durable | None = None,
                   run_id: str = "", key: str = "") -> str:
    """Run one tool call; every failure becomes a message the model can read.

    A tool with ``effect`` (``@orla.tool(effect=True)``) whose ``key`` the run's checkpoint
    store already holds is not called again: the recorded result is returned.
    """
    fn = tools.get(call.name)
    if fn is None:
        return f"error: there is no tool named {call.name!r}; the tools are {sorted(tools)}"
    try:
        arguments = _checked_arguments(fn, call)
    except ValueError as exc:
        return f"error: the arguments of {call.name} are not valid: {exc}"
    if effect and durable is not None and (done := durable.effect(key)) is not None:
        return done
    if effect and IDEMPOTENCY_KEY in inspect.signature(fn).parameters:
        arguments[IDEMPOTENCY_KEY] = f"{run_id}:{key}"
    async with limit or contextlib.nullcontext():
        result = _capped(await _outcome(fn, arguments, call.name, timeout))
    if effect and durable is not None:
        durable.save_effect(key, result)  # recorded before the model sees it
    return result


async def _outcome(fn: Callable[..., Any], arguments: dict[str, Any], name: str,
                   timeout: float) -> str:
    try:
        if inspect.iscoroutinefunction(fn):
            value = await asyncio.wait_for(fn(**arguments), timeout)
        else:
            value = await asyncio.wait_for(_in_own_thread(fn, arguments), timeout)
    except TimeoutError:
        return (f"error: {name} did not return within {timeout:g} s and was abandoned; "
                "try another way, or answer without it")
    except (SystemExit, KeyboardInterrupt) as exc:
        return f"error: {name} tried to stop the process ({type(exc).__name__}); it did not"
    except Exception as exc:
        return f"error: {name} raised {type(exc).__name__}: {exc}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _in_own_thread(fn: Callable[..., Any], arguments: dict[str, Any]) -> asyncio.Future[Any]:
    """``fn(**arguments)`` on a daemon thread (with the caller's context variables)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (context.run(fn, **arguments), None)
        except BaseException as exc:  # SystemExit too: it belongs to the call, not the thread
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, future, *outcome)

    threading.Thread(target=work, daemon=True, name=f"orla-tool-{fn.__name__}").start()
    return future


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


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
