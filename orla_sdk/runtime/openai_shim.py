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
usage chunk with ``stream_options.include_usage``), with what the engine sent beside the
text (logprobs, ``system_fingerprint``). Tools pass through: the model's tool calls come
back to the caller, who runs them. A backend error comes back as OpenAI's error envelope,
so the client raises its usual ``APIStatusError`` subclasses. ``n`` above 1 is refused
here (a stage's call is one model call); the proxy serves it as that many calls.

``open_streams`` is the streaming both share: calls whose text pieces become the
server-sent events of one answer, one choice a call.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, overload

import httpx

from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.wire import (
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
Sink = Callable[[str | None], None]  # streamed text, then None when the call is over
Call = Callable[[Sink], Coroutine[Any, Any, ChatResult]]  # a model call, given its sink


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
    parameters; fields orla does not read reach the engine as they are (``extra_body``).
    It streams from the engine where the body asks to stream. One request is one choice:
    ``n`` above 1 is a ``ValueError``."""
    if body.get("n", 1) not in (1, None) or isinstance(body.get("n"), bool):
        raise ValueError(f"'n' is {body['n']!r}: a call made here is one model call; make "
                         "several calls for several choices")
    request = chat_request(body)
    params = {**target.params, **request.params}
    if "extra_body" in target.params and "extra_body" in request.params:
        params["extra_body"] = {**target.params["extra_body"], **request.params["extra_body"]}
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
    """Streamed model calls under way, the choices of one answer: their text pieces as
    they come, ``(choice, piece)``, with ``(choice, None)`` once a choice's call is over;
    the calls' results; and the chunks that speak for them."""

    pieces: asyncio.Queue[tuple[int, str | None]]
    chunks: Chunks
    results: list[asyncio.Future[ChatResult]] = field(default_factory=list)
    head: list[tuple[int, str | None]] = field(default_factory=list)  # read while waiting
    running: int = 0  # the calls whose end has not been read yet

    async def wait_first(self) -> None:
        """Wait for the first piece of text; where every call ends without one, a failure
        raises here (so the caller can answer with an error status instead)."""
        while self.running:
            index, piece = await self.pieces.get()
            if piece is not None:
                self.head.append((index, piece))
                return
            self.running -= 1
        for result in self.results:
            await result

    async def events(self) -> AsyncIterator[bytes]:
        """The server-sent events of the answer; a failure after the first piece ends them
        with an error event. Pieces that arrived together go out in one write. Closed
        early (the client went away), the calls still running are cancelled."""
        try:
            items, self.head = self.head, []
            while True:
                events = self._read(items)
                if events:
                    yield events
                if not self.running:
                    break
                items = [await self.pieces.get()]
                while not self.pieces.empty():
                    items.append(self.pieces.get_nowait())
            yield b"".join(await self._ending())
        finally:
            self.cancel()

    def _read(self, items: list[tuple[int, str | None]]) -> bytes:
        """The events of ``items``; the end of a call counts it out."""
        events = []
        for index, piece in items:
            if piece is None:
                self.running -= 1
            else:
                events.append(self.chunks.piece(piece, index))
        return b"".join(events)

    async def _ending(self) -> list[bytes]:
        """The events after the text: each choice's end, then the stream's; or the error
        event of the first call that failed."""
        results = []
        for result in self.results:
            try:
                results.append(await result)
            except Exception as exc:
                return [self.chunks.error(exc)]
        events = [event for index, result in enumerate(results)
                  for event in self.chunks.finish(result, index)]
        return [*events, *self.chunks.close(results)]

    def cancel(self) -> None:
        for result in self.results:
            result.cancel()


async def open_streams(calls: Sequence[Call], chunks: Chunks,
                       run: Callable[[Coroutine[Any, Any, ChatResult]],
                                     asyncio.Future[ChatResult]] = asyncio.ensure_future,
                       ) -> StreamedCall:
    """Start ``calls`` (each gets the sink its text pieces go to, from any thread) with
    ``run``, choice ``i`` the ``i``-th, and wait for the first piece of text. A failure
    before that raises here, so the caller can answer with an error status instead of an
    event stream."""
    stream = StreamedCall(asyncio.Queue(), chunks, running=len(calls))
    for index, call in enumerate(calls):
        sink = _sink(stream.pieces, index)
        stream.results.append(run(_until_done(call(sink), sink)))
    try:
        await stream.wait_first()
    except BaseException:
        stream.cancel()
        raise
    return stream


async def open_stream(call: Call, chunks: Chunks,
                      run: Callable[[Coroutine[Any, Any, ChatResult]],
                                    asyncio.Future[ChatResult]] = asyncio.ensure_future,
                      ) -> StreamedCall:
    """``open_streams`` of one call."""
    return await open_streams([call], chunks, run)


def _sink(pieces: asyncio.Queue[tuple[int, str | None]], index: int) -> Sink:
    """Where choice ``index``'s pieces go, in order, from any thread: at once from the
    queue's own loop thread, else handed to that loop."""
    loop, owner = asyncio.get_running_loop(), threading.get_ident()

    def put(piece: str | None) -> None:
        if threading.get_ident() == owner:
            pieces.put_nowait((index, piece))
        else:
            loop.call_soon_threadsafe(pieces.put_nowait, (index, piece))

    return put


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
        self.call.cancel()
