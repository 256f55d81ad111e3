"""Existing ``openai`` code, served through orla without a rewrite.

    client = orla.openai_client()  # or orla.wrap(openai.OpenAI(...)), or the async twins

    @orla.stage(model="light")
    def summarize(text: str) -> str:
        reply = client.chat.completions.create(model="light", messages=[...])
        return reply.choices[0].message.content or ""

These are real ``openai`` clients whose HTTP transport never reaches the network: it
reads the chat-completions request and serves it in the current stage's context, as
``orla.generate`` does: the stage's mapped backend and model (the request's ``model``
counts only where it names a logical model of the plan), the backend's queue, the
stage's priority, the run's cache slot, and a ``CallRecord`` in the stage's record.

The answer comes back in OpenAI's shape (server-sent chunks with ``stream=True``, a
usage chunk with ``stream_options.include_usage``). Tools pass through: the model's
tool calls come back to the caller, who runs them. A backend error comes back as
OpenAI's error envelope, so the client raises its usual ``APIStatusError`` subclasses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, overload

import httpx

from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.wire import (
    PARAMS,
    Chunks,
    chat_request,
    completion_json,
    error_json,
    error_status,
)
from orla_sdk.errors import BackendError, OrlaError
from orla_sdk.ir import Target
from orla_sdk.runtime.bodies import future_on_loop, iterate_on_loop, wait_on_loop
from orla_sdk.runtime.call import call_model
from orla_sdk.runtime.context import StageContext, current_stage
from orla_sdk.runtime.routing import stage_target

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
BASE_URL = "http://orla.invalid/v1"  # never resolved: the transport answers every request
# request fields the shim reads itself, or that orla sets (the slot, the priority)
OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "response_format",
                        "tools", "id_slot", "priority"})
Sink = Callable[[str | None], None]  # streamed text, then None when the call is over


def openai_client() -> openai.OpenAI:
    """An ``openai.OpenAI`` whose chat completions are served by the current stage."""
    import openai  # loaded on first use: ``import orla_sdk`` stays light

    return openai.OpenAI(api_key="orla", base_url=BASE_URL, http_client=_sync_http())


def async_openai_client() -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` whose chat completions are served by the current stage."""
    import openai

    return openai.AsyncOpenAI(api_key="orla", base_url=BASE_URL, http_client=_async_http())


@overload
def wrap(client: openai.AsyncOpenAI) -> openai.AsyncOpenAI: ...


@overload
def wrap(client: openai.OpenAI) -> openai.OpenAI: ...


def wrap(client: openai.OpenAI | openai.AsyncOpenAI) -> openai.OpenAI | openai.AsyncOpenAI:
    """A copy of ``client`` (its headers, timeout and retries kept) served through orla."""
    import openai

    if isinstance(client, openai.AsyncOpenAI):
        return client.with_options(http_client=_async_http())
    if isinstance(client, openai.OpenAI):
        return client.with_options(http_client=_sync_http())
    raise TypeError(f"orla.wrap takes an openai.OpenAI or openai.AsyncOpenAI, not "
                    f"{type(client).__name__}")


# openai 3 annotates http_client as httpx2's client and accepts httpx's as well; older
# releases take httpx's. Any keeps the call type-correct under both.
def _sync_http() -> Any:
    return httpx.Client(transport=StageTransport(), trust_env=False)


def _async_http() -> Any:
    return httpx.AsyncClient(transport=AsyncStageTransport(), trust_env=False)


# ---- the transports -------------------------------------------------------------------
class StageTransport(httpx.BaseTransport):
    """For sync stage bodies: the call is awaited on the run's event loop while the body
    waits (see ``orla_sdk.runtime.bodies``)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _stage()
        fix = "use orla.async_openai_client() or orla.wrap(openai.AsyncOpenAI(...)) inside it."
        try:
            body = _body(request)
            if not body.get("stream"):
                result = wait_on_loop(ctx, _serve(ctx, body, None), fix=fix)
                return _json(200, completion_json(body, result))
            pieces: Pieces = iterate_on_loop(ctx, lambda put: _serve(ctx, body, put), fix=fix)
            return _sse_response(_SyncEvents(_first_waited(pieces), Chunks.of(body)))
        except (BackendError, ValueError) as exc:
            return _error(exc)


class AsyncStageTransport(httpx.AsyncBaseTransport):
    """For async stage bodies: the call is awaited on the run's event loop (or handed to
    it, from a loop of the caller's own)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _stage()
        try:
            body = _body(request)
            if not body.get("stream"):
                result = await _start(ctx, _serve(ctx, body, None))
                return _json(200, completion_json(body, result))
            call = await open_stream(lambda put: _serve(ctx, body, put), Chunks.of(body),
                                     run=lambda work: _start(ctx, work))
            return _sse_response(_AsyncEvents(call))
        except (BackendError, ValueError) as exc:
            return _error(exc)


def _stage() -> StageContext:
    ctx = current_stage.get()
    if ctx is None:
        raise OrlaError("an openai client from orla.openai_client(), orla.async_openai_client()"
                        " or orla.wrap() was used outside a stage run by orla.run; make its "
                        "calls from the body of an @orla.stage function that a compiled plan "
                        "runs.")
    return ctx


def _start(ctx: StageContext, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``work`` on the run's loop; awaitable from the caller's loop."""
    if asyncio.get_running_loop() is ctx.run.loop:
        return asyncio.ensure_future(work)
    return future_on_loop(ctx, work)


# ---- serving one request --------------------------------------------------------------
async def _serve(ctx: StageContext, body: dict[str, Any],
                 on_token: Callable[[str], None] | None) -> ChatResult:
    named = ctx.run.plan.mapping.get(str(body.get("model", "")))
    if isinstance(named, Target):
        target = named
    else:
        target = await stage_target(ctx, chat_request(body).messages)
    request = engine_request(body, target, priority=ctx.priority, on_token=on_token)
    return await call_model(ctx, ctx.run.pool[target.backend], target, request)


def engine_request(body: dict[str, Any], target: Target, *, priority: int | None,
                   on_token: Callable[[str], None] | None) -> ChatRequest:
    """A chat-completions ``body`` as the request ``target`` gets: its model and
    parameters; fields orla does not read reach the engine as they are (``extra_body``)."""
    request = chat_request(body)
    params = {**target.params, **request.params}
    extra = {k: v for k, v in body.items() if k not in OWN_FIELDS and k not in PARAMS}
    if extra:
        params["extra_body"] = {**params.get("extra_body", {}), **extra}
    return replace(request, model=target.model, params=params, slot=None, priority=priority,
                   on_token=on_token)


async def _until_done(work: Coroutine[Any, Any, ChatResult], sink: Sink) -> ChatResult:
    """``work``'s result; ``sink`` gets None once it is over, whatever the outcome."""
    try:
        return await work
    finally:
        sink(None)


@dataclass
class StreamedCall:
    """A streamed model call under way: its first text piece, the pieces after it (None
    last), the call's result, and the chunks that speak for it."""

    first: str | None
    pieces: asyncio.Queue[str | None]
    result: asyncio.Future[ChatResult]
    chunks: Chunks

    async def events(self) -> AsyncIterator[bytes]:
        """The server-sent events of the answer; a failure after the first piece ends them
        with an error event."""
        piece = self.first
        while piece is not None:
            yield self.chunks.piece(piece)
            piece = await self.pieces.get()
        try:
            result = await self.result
        except BackendError as exc:
            yield self.chunks.error(exc)
            return
        for event in self.chunks.end(result):
            yield event


async def open_stream(call: Callable[[Sink], Coroutine[Any, Any, ChatResult]], chunks: Chunks,
                      run: Callable[[Coroutine[Any, Any, ChatResult]],
                                    asyncio.Future[ChatResult]] = asyncio.ensure_future,
                      ) -> StreamedCall:
    """Start ``call`` (it gets the sink its text pieces go to, from any thread) with ``run``
    and wait for its first piece. A failure before that raises here, so the caller can
    answer with an error status instead of an event stream."""
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def put(piece: str | None) -> None:  # in order, from any thread
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    result = run(_until_done(call(put), put))
    try:
        first = await pieces.get()
        if first is None:
            await result
    except BaseException:
        result.cancel()
        raise
    return StreamedCall(first, pieces, result, chunks)


def _body(request: httpx.Request) -> dict[str, Any]:
    if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
        raise ValueError(f"orla serves chat completions only, not {request.method} "
                         f"{request.url.path}")
    try:
        body = json.loads(request.content or b"{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


# ---- OpenAI's answers, as httpx responses (the shapes are orla_sdk.backends.wire's) ---
def _json(status: int, data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(status, json=data, headers={"x-should-retry": "false"})


def _error(exc: Exception) -> httpx.Response:
    """OpenAI's error envelope; orla has already retried what was worth retrying."""
    status = error_status(exc)
    return _json(status, error_json(status, str(exc)))


def _sse_response(stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(200, stream=stream, headers={"content-type": "text/event-stream"})


Pieces = Generator[str, None, ChatResult]  # a call's text pieces, then its result


def _first_waited(pieces: Pieces) -> Pieces:
    """``pieces`` with the first one already waited for: a failure before any text raises
    here, so the caller answers with an error status instead of an event stream."""
    try:
        first = next(pieces)
    except StopIteration as done:
        return _no_more(done.value)
    return _after(first, pieces)


def _after(first: str, rest: Pieces) -> Pieces:
    yield first
    return (yield from rest)


def _no_more(result: ChatResult) -> Pieces:
    return result
    yield  # a generator that yields nothing


class _SyncEvents(httpx.SyncByteStream):
    def __init__(self, pieces: Pieces, chunks: Chunks) -> None:
        self.pieces, self.chunks = pieces, chunks

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                piece = next(self.pieces)
            except StopIteration as done:
                yield from self.chunks.end(done.value)
                return
            except BackendError as exc:  # after the first piece: the stream ends with it
                yield self.chunks.error(exc)
                return
            yield self.chunks.piece(piece)

    def close(self) -> None:
        self.pieces.close()


class _AsyncEvents(httpx.AsyncByteStream):
    def __init__(self, call: StreamedCall) -> None:
        self.call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for event in self.call.events():
            yield event

    async def aclose(self) -> None:
        self.call.result.cancel()
