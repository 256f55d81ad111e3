"""Any OpenAI-compatible engine, over HTTP, with each engine's own request fields.

A request that asks to stream (orla's own calls do, so the time to first token is
measured where the caller sees it) is streamed, its last chunk carrying the usage,
including ``cached_tokens`` where the engine reports them; one carried for a client that
did not stream is not, and the engine answers it as it would the client bare. The
server-sent events are read as plain JSON over ``orla_sdk.backends.http1``'s lean
connections: the ``openai`` client would build a typed object per chunk, and ``httpx``
alone costs several times what a local engine's HTTP does. The bodies out and the chunks
back are ``orla_sdk.backends.wire``'s.

A stream that breaks (a line that is not JSON, an end with neither a finish reason nor
``[DONE]``, a lost connection), or an unstreamed answer that is not a completion, is a
retryable ``BackendError``, unless text has already reached the caller; a refused
connection or a 502-504 answer is a ``BackendDown``, which the pool waits for (``ready``
polls the engine). A lost connection is tried again at once
on a fresh one (a kept-alive connection the server closed fails once); a request that
loses that one too is not sent again, as it may be what breaks the engine.
Connections are not capped (the backend's queue in front is the cap).
Engine flavours add their own fields:

- llama.cpp: ``id_slot`` pins the request to a slot, ``cache_prompt`` keeps its prefix;
- vLLM: ``priority``, where a lower value is served earlier;
- SGLang: ``priority``, where a higher value is served earlier (server started with
  ``--enable-priority-scheduling``);
- Ollama: ``keep_alive`` (how long the model stays loaded after the call), when the
  backend was declared with one;
- other servers: no extra fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.http1 import Body, ConnectionLost, Unreachable, connection_pool
from orla_sdk.backends.wire import (
    StreamedReply,
    completion_chunk,
    error_message,
    request_json,
)
from orla_sdk.errors import BackendDown, BackendError
from orla_sdk.ir import BackendSpec

ENGINE_DOWN_STATUSES = (502, 503, 504)  # an engine loading, restarting, or gone behind a proxy
POLL_TIMEOUT_S = 2.0  # how long one poll of an engine that is down waits for its answer
_JSON = json.JSONDecoder()


class OpenAICompatibleBackend:
    def __init__(self, spec: BackendSpec, *, api_key: str | None = None,
                 timeout: float = 120.0) -> None:
        if not spec.url:
            raise BackendError(spec.name, "has no url; declare it with url='http://host:port/v1'"
                               " (or start the embedded engine for llama.cpp backends).",
                               retryable=False)
        self.spec = spec
        try:
            self._http = connection_pool(
                api_base(spec.url), timeout=timeout,
                headers={"Authorization": f"Bearer {api_key or 'not-needed'}"})
        except ValueError as exc:
            raise BackendError(spec.name, f"cannot call its url: {exc}", retryable=False) from exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat(self, request: ChatRequest) -> ChatResult:
        body = json.dumps(self.body(request), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()
        reply = StreamedReply(request.on_token)
        try:
            try:
                result = await self._chat_once(body, reply, request.stream)
            except ConnectionLost:
                if reply.delivered:
                    raise
                # A pooled keep-alive connection the server has closed fails once; a fresh
                # connection tells that apart from a request the engine drops itself.
                reply = StreamedReply(request.on_token)
                result = await self._chat_once(body, reply, request.stream, fresh=True)
        except TimeoutError as exc:
            raise BackendError(self.spec.name, f"timed out at {self.spec.url}: {exc}",
                               retryable=True) from exc
        except Unreachable as exc:
            raise BackendDown(self.spec.name, f"cannot reach {self.spec.url} ({exc}); is the "
                              "engine running?") from exc
        except ConnectionLost as exc:
            raise self._lost(exc, reply) from exc
        return result

    async def ready(self) -> bool:
        """Whether the engine answers now, with anything below 500 (a server without
        ``/models`` answers 404, and is up): the pool polls an engine that is down with
        this before it sends the request again."""
        try:  # a fresh connection: an idle one may be what the engine dropped
            async with self._http.request("GET", "/models", fresh=True,
                                          timeout=POLL_TIMEOUT_S) as answer:
                await answer.read()
        except OSError:  # unreachable, lost or timed out
            return False
        return answer.status < 500

    async def _chat_once(self, body: bytes, reply: StreamedReply, stream: bool, *,
                         fresh: bool = False) -> ChatResult:
        started = time.perf_counter()
        first: float | None = None
        async with self._http.request("POST", "/chat/completions", body,
                                      fresh=fresh) as answer:
            if answer.status >= 400:
                raise self._error_answer(answer.status, await answer.read())
            if stream:
                first = await self._read(answer, reply, started)
            else:
                self._read_completion(await answer.read(), reply)
        duration = time.perf_counter() - started
        if stream and first is None:  # a reply without output: its end is its first token
            first = duration
        return reply.result(ttft_s=first, duration_s=duration)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions request body; ``extra_body`` in the request's parameters
        (and the engine's own fields) are merged in, those given in parameters winning."""
        return request_json(request, fields=engine_fields(self.spec.kind, request,
                                                          self.spec.options))

    async def _read(self, answer: Body, reply: StreamedReply,
                    started: float) -> float | None:
        """Read the server-sent events into ``reply``, up to ``[DONE]``; the seconds to its
        first output. The body is read to its end even so: a connection whose response was
        left unread is closed, not pooled, and the next call would pay for a new one."""
        first: float | None = None
        done = False
        async for line in _lines(answer):
            if done or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            done = data == b"[DONE]"
            if not done and reply.add(self._event(data)) and first is None:
                first = time.perf_counter() - started
        if not (done or reply.finish):
            raise BackendError(self.spec.name, f"the stream from {self.spec.url} ended without "
                               "a finish_reason or [DONE]: the engine (or a proxy in front of "
                               "it) cut the reply short", retryable=True)
        return first

    def _read_completion(self, data: bytes, reply: StreamedReply) -> None:
        """Read an unstreamed answer into ``reply``: its text reaches ``on_token`` in one
        piece, once the answer is whole."""
        try:
            completion = json.loads(data)
        except ValueError:
            completion = None
        if isinstance(completion, dict) and "error" in completion:  # a failure, as status 200
            raise BackendError(self.spec.name, f"failed: {error_message(completion['error'])}",
                               retryable=False)
        try:
            if not isinstance(completion, dict):
                raise ValueError("not a JSON object")
            chunk = completion_chunk(completion)
        except ValueError as exc:
            raise BackendError(self.spec.name, f"sent a malformed completion ({exc}): "
                               f"{data[:200].decode(errors='replace')!r}",
                               retryable=True) from None
        reply.add(chunk)

    def _event(self, data: bytes) -> dict[str, Any]:
        """One server-sent event's JSON."""
        try:
            text = data.decode()
            event, end = _JSON.raw_decode(text)  # json.loads less its checks for whitespace
            if end != len(text):
                event = None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise BackendError(self.spec.name, f"sent a malformed stream line (not a JSON "
                               f"object): {data[:200].decode(errors='replace')!r}",
                               retryable=True)
        if "error" in event:  # a failure after streaming began
            raise BackendError(self.spec.name, f"failed while streaming: "
                               f"{error_message(event['error'])}", retryable=False)
        return event

    def _error_answer(self, status: int, body: bytes) -> BackendError:
        message = f"answered {status}: {_message(body)}"
        if status in ENGINE_DOWN_STATUSES:
            return BackendDown(self.spec.name, message, status=status)
        return BackendError(self.spec.name, message, retryable=status >= 500, status=status)

    def _lost(self, exc: ConnectionLost, reply: StreamedReply) -> BackendError:
        """The error for a connection lost while the reply was being read, after the
        fresh connection tried at once: not retried, since the request itself may be what
        the engine drops (an engine that is down refuses the fresh connection instead,
        and is waited for)."""
        if reply.delivered:
            return BackendError(self.spec.name, f"lost the connection to {self.spec.url} after "
                                f"part of the reply had streamed to the caller ({exc!r}); not "
                                "retried, so that no text arrives twice", retryable=False)
        return BackendError(self.spec.name, f"lost the connection to {self.spec.url} twice "
                            f"for this request, on a fresh connection too ({exc!r}); not sent "
                            "again, as the request itself may be what breaks the engine "
                            "(check its log)", retryable=False)


async def _lines(answer: Body) -> AsyncIterator[bytes]:
    """The lines of an answer's body, as bytes."""
    rest = b""
    async for piece in answer.pieces():
        *lines, rest = (rest + piece).split(b"\n")
        for line in lines:
            yield line
    if rest:
        yield rest


def api_base(url: str) -> str:
    """The ``/v1`` base the openai client expects, whichever form ``url`` was given in."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def engine_fields(kind: str, request: ChatRequest,
                  options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request fields that only this kind of engine understands."""
    fields: dict[str, Any] = {}
    if kind == "ollama" and options and "keep_alive" in options:
        fields["keep_alive"] = options["keep_alive"]
    if kind == "llamacpp" and request.slot is not None:
        fields.update(id_slot=request.slot, cache_prompt=True)
    if kind == "vllm" and request.priority is not None:
        fields["priority"] = 100 - request.priority
    if kind == "sglang" and request.priority is not None:
        fields["priority"] = request.priority
    return fields


def _message(body: bytes) -> str:
    """The error message of an engine's error answer (OpenAI's envelope, or the text)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500].decode(errors="replace")
    return error_message(data.get("error", data)) if isinstance(data, dict) else str(data)[:500]
