"""The OpenAI chat-completions wire format, in both directions, in one place.

JSON bodies in and out of orla: a request body as a ``ChatRequest`` (its fields checked)
and back, a ``ChatResult`` as a completion (or as the server-sent chunks of a streamed
one; several results as the choices of one answer) and an engine's reply, streamed or
not, read back into a ``ChatResult``, the usage, and the error envelope with the status
an error answers with.

What an engine sends that orla does not read (``logprobs``, ``system_fingerprint``,
llama.cpp's ``timings``, a reasoning text, usage details) is kept as the ``Extras`` of an
``EngineResult`` and of each streamed ``Piece``, and written back into the answers, so a
client behind orla sees it as the engine sent it.

Pure format: no transport, nothing above ``orla_sdk.backends.base`` and
``orla_sdk.errors``. The engine client, the simulator's HTTP server, the ``openai``
client shim and the proxy all speak it through this module.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall
from orla_sdk.errors import BackendError

PARAMS = ("max_tokens", "max_completion_tokens", "seed", "temperature", "top_p", "tool_choice")
# the other fields of a request body that orla reads itself, or that orla sets (the slot,
# the priority); the rest are the engine's own, kept in ``extra_body``
OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "response_format",
                        "tools", "id_slot", "priority", "n"})
COUNTS = ("max_tokens", "max_completion_tokens")  # parameters that are non-negative integers
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
# the fields of a streamed chunk, a choice, a delta and a usage that orla reads itself;
# every other field is the engine's own, passed on as it came
CHUNK_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage"})
CHOICE_FIELDS = frozenset({"index", "delta", "message", "finish_reason", "logprobs"})
DELTA_FIELDS = frozenset({"role", "content", "tool_calls"})
USAGE_FIELDS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})


# ---- what engines send beside the text --------------------------------------------------
@dataclass(frozen=True)
class Extras:
    """Fields of an engine's answer that orla does not read, as the engine sent them: of
    the completion (``system_fingerprint``, llama.cpp's ``timings``), of its choice
    (``logprobs``, vLLM's ``stop_reason``), of its message (``reasoning_content``) and of
    its usage (``completion_tokens_details``)."""

    completion: Mapping[str, Any] = field(default_factory=dict)
    choice: Mapping[str, Any] = field(default_factory=dict)
    message: Mapping[str, Any] = field(default_factory=dict)
    usage: Mapping[str, Any] = field(default_factory=dict)


NO_EXTRAS = Extras()


@dataclass(frozen=True)
class EngineResult(ChatResult):
    """A ``ChatResult`` with the ``Extras`` the engine's answer carried."""

    extras: Extras = NO_EXTRAS


class Piece(str):
    """A piece of streamed text, with the ``Extras`` of the chunk it came in (its
    ``logprobs``, the ``system_fingerprint``): what a stream's pieces go on to the caller as."""

    extras: Extras

    def __new__(cls, text: str, extras: Extras = NO_EXTRAS) -> Piece:
        piece = super().__new__(cls, text)
        piece.extras = extras
        return piece


def extras_of(value: object) -> Extras:
    """The extras of an ``EngineResult`` or a ``Piece``; none for anything else."""
    extras = getattr(value, "extras", NO_EXTRAS)
    return extras if isinstance(extras, Extras) else NO_EXTRAS


# ---- a request body in --------------------------------------------------------------------
def chat_request(body: dict[str, Any]) -> ChatRequest:
    """An OpenAI chat-completions body as a ``ChatRequest``; a field of the wrong shape is
    a ``ValueError`` that names it. Fields orla does not read (an engine's own, such as
    llama.cpp's ``cache_prompt``) are kept as they came in ``params["extra_body"]``."""
    messages = checked_messages(body.get("messages"))
    schema, name = response_schema(body.get("response_format"))
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list)
                                  and all(isinstance(t, dict) for t in tools)):
        raise ValueError("'tools' must be a list of tool objects")
    stream_options(body)
    params = {k: checked_param(k, body[k]) for k in PARAMS if k in body}
    extra = {k: v for k, v in body.items() if k not in OWN_FIELDS and k not in PARAMS}
    if extra:
        params["extra_body"] = extra
    return ChatRequest(model=str(body.get("model", "")), messages=messages, params=params,
                       json_schema=schema, schema_name=name, tools=tools or [],
                       slot=body.get("id_slot"), priority=body.get("priority"),
                       stream=bool(body.get("stream")))


def checked_messages(messages: Any) -> list[dict[str, Any]]:
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)):
        raise ValueError("'messages' must be a non-empty list of chat messages, each an "
                         "object with a 'role' string")
    return messages


def as_integer(value: Any) -> int | None:
    """``value`` as an integer, where JSON counts it as one (``3`` or ``3.0``); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def checked_param(name: str, value: Any) -> Any:
    """An inference parameter, checked for its type (its range is the engine's to judge);
    an integer written as ``3.0`` is passed on as ``3``."""
    if value is None:
        return value
    if name in COUNTS or name == "seed":
        number = as_integer(value)
        if number is None or (name in COUNTS and number < 0):
            kind = "a non-negative integer" if name in COUNTS else "an integer"
            raise ValueError(f"{name!r} must be {kind}, not {value!r}"[:300])
        return number
    if name in ("temperature", "top_p"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name!r} must be a number, not {value!r}"[:300])
    elif name == "tool_choice" and not isinstance(value, str | dict):
        raise ValueError(f"'tool_choice' must be a string or an object, not {value!r}"[:300])
    return value


def response_schema(response_format: Any) -> tuple[dict[str, Any] | None, str]:
    """The JSON schema (and its name) a ``response_format`` asks the answer to match."""
    if response_format is None:
        return None, "output"
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in RESPONSE_FORMATS:
        raise ValueError(f"'response_format' must be an object whose 'type' is one of "
                         f"{list(RESPONSE_FORMATS)}, not {response_format!r}"[:300])
    if kind == "json_object":
        return {"type": "object"}, "output"
    if kind == "text":
        return None, "output"
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        spec = {"schema": "missing"}
    schema = spec.get("schema", {"type": "object"})
    schema = {"type": "object"} if schema is None else schema
    name = spec.get("name", "output")
    if not isinstance(schema, dict) or not isinstance(name, str):
        raise ValueError("'response_format.json_schema' must be an object with a 'schema' "
                         "object and a 'name' string")
    return schema, name


def stream_options(body: dict[str, Any]) -> dict[str, Any]:
    """The body's ``stream_options`` (``include_usage``)."""
    options = body.get("stream_options")
    if options is None:
        return {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False),
                                                       bool):
        raise ValueError("'stream_options' must be an object such as {\"include_usage\": true}")
    return options


# ---- answers out --------------------------------------------------------------------------
def message_json(result: ChatResult) -> dict[str, Any]:
    message: dict[str, Any] = {**extras_of(result).message, "role": "assistant",
                               "content": result.content or None}
    if result.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function", "function": {
            "name": c.name, "arguments": c.arguments}} for c in result.tool_calls]
    return message


def usage_json(*results: ChatResult) -> dict[str, Any]:
    """The usage of ``results`` (the choices of one answer), summed; the engine's own
    usage fields come from the first."""
    extra = extras_of(results[0]).usage
    details = extra.get("prompt_tokens_details")
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {**extra, "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {**(details if isinstance(details, dict) else {}),
                                      "cached_tokens": sum(r.cached_tokens for r in results)}}


def finish_reason(result: ChatResult) -> str:
    return result.finish_reason or ("tool_calls" if result.tool_calls else "stop")


def envelope(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The fields every answer object of ``kind`` starts with (``chat.completion`` or
    ``chat.completion.chunk``), for an answer to ``body``."""
    return {"id": f"chatcmpl-orla-{secrets.token_hex(8)}", "object": kind,
            "created": int(time.time()), "model": str(body.get("model") or "orla")}


def completion_json(body: dict[str, Any], *results: ChatResult) -> dict[str, Any]:
    """The ``chat.completion`` answering ``body`` with ``results``, one choice each; the
    engine's own completion fields come from the first."""
    return {**extras_of(results[0]).completion, **envelope(body, "chat.completion"),
            "choices": [{"index": index, "message": message_json(result),
                         "finish_reason": finish_reason(result), "logprobs": None,
                         **extras_of(result).choice}
                        for index, result in enumerate(results)],
            "usage": usage_json(*results)}


def error_type(status: int) -> str:
    return "invalid_request_error" if status < 500 else "server_error"


def error_json(status: int, message: str, code: str | int | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope for an answer of ``status``."""
    return {"error": {"message": message, "type": error_type(status), "param": param,
                      "code": code}}


def error_status(exc: Exception) -> int:
    """The status an error answers with: the engine's own, 503 for a backend that may come
    back, 502 for one that failed otherwise, 400 for a request orla cannot read (a
    ``ValueError``), 500 for anything else."""
    if isinstance(exc, ValueError):
        return 400
    if not isinstance(exc, BackendError):
        return 500
    if exc.status is not None:
        return exc.status
    return 503 if exc.retryable else 502


def sse_data(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class Chunks:
    """The server-sent events of one streamed answer, of one choice or several (each
    event names its choice's ``index``)."""

    envelope: dict[str, Any]
    include_usage: bool
    started: set[int] = field(default_factory=set)  # choices whose first delta went out
    # the message extras each choice has streamed (a reasoning text, say)
    sent: dict[int, set[str]] = field(default_factory=dict)
    _head_of: Mapping[str, Any] | None = field(default=None, init=False, compare=False,
                                                repr=False)
    _head: str = field(default="", init=False, compare=False, repr=False)

    @classmethod
    def of(cls, body: dict[str, Any]) -> Chunks:
        options = body.get("stream_options")
        include = isinstance(options, dict) and options.get("include_usage") is True
        return cls(envelope(body, "chat.completion.chunk"), include)

    def piece(self, text: str, index: int = 0) -> bytes:
        """A streamed piece of choice ``index``, with what the engine sent beside it."""
        extras = extras_of(text)
        if extras.message:
            self.sent.setdefault(index, set()).update(extras.message)
        content = {"content": str(text)} if text else {}  # a piece of reasoning alone
        return self._delta({**extras.message, **content}, index, extras.completion,
                           extras.choice)

    def end(self, result: ChatResult) -> Iterator[bytes]:
        """The events after the streamed text of a one-choice answer: its ``finish`` and
        the ``close`` of the stream."""
        yield from self.finish(result)
        yield from self.close([result])

    def finish(self, result: ChatResult, index: int = 0) -> Iterator[bytes]:
        """The events that end choice ``index``: what was not streamed of it (all of its
        text where the backend streamed none), its tool calls and its finish reason."""
        extras = extras_of(result)
        unsent = {k: v for k, v in extras.message.items() if k not in self.sent.get(index, ())}
        if index not in self.started and (result.content or not result.tool_calls):
            yield self._delta({**unsent, "content": result.content}, index, extras.completion,
                              extras.choice)
        elif unsent:
            yield self._delta(unsent, index, extras.completion)
        for number, call in enumerate(result.tool_calls):
            yield self._delta({"tool_calls": [{"index": number, "id": call.id,
                                               "type": "function",
                                               "function": {"name": call.name,
                                                            "arguments": call.arguments}}]},
                              index, extras.completion)
        rest = {k: v for k, v in extras.choice.items() if k != "logprobs"}  # logprobs went
        yield self._event([{**rest, "index": index, "delta": {},
                            "finish_reason": finish_reason(result)}], extras.completion)

    def close(self, results: list[ChatResult]) -> Iterator[bytes]:
        """The last events: the usage of every choice (when asked for) and ``[DONE]``."""
        if self.include_usage:
            yield self._event([], extras_of(results[0]).completion, usage=usage_json(*results))
        yield SSE_DONE

    def error(self, exc: Exception) -> bytes:
        """The event that ends a stream which failed after it began."""
        status = error_status(exc)
        return sse_data(error_json(status, str(exc), code=status))

    def _delta(self, delta: dict[str, Any], index: int, completion: Mapping[str, Any],
               choice: Mapping[str, Any] | None = None) -> bytes:
        if index not in self.started:
            delta = {"role": "assistant", **delta}
            self.started.add(index)
        return self._event([{**(choice or {}), "index": index, "delta": delta,
                             "finish_reason": None}], completion)

    def _event(self, choices: list[dict[str, Any]], completion: Mapping[str, Any],
               **extra: Any) -> bytes:
        if extra:
            return sse_data({**completion, **self.envelope, "choices": choices, **extra})
        if completion is not self._head_of:  # the fields before the choices, encoded once
            self._head = json.dumps({**completion, **self.envelope})[:-1]
            self._head_of = completion
        return f"data: {self._head}, \"choices\": {json.dumps(choices)}}}\n\n".encode()


# ---- orla as the client: a request body out, the engine's reply back --------------------
def request_json(request: ChatRequest, *,
                 fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``request`` as a chat-completions body, streamed with a last usage chunk where the
    request asks to stream. ``fields`` (an engine's own) and then the ``extra_body`` of
    the request's parameters are merged in, those given in parameters winning."""
    params = dict(request.params)
    extra = params.pop("extra_body", {})
    streaming = ({"stream": True, "stream_options": {"include_usage": True}}
                 if request.stream else {})
    body: dict[str, Any] = {"model": request.model, "messages": request.messages,
                            **streaming, **params}
    if request.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": request.schema_name, "schema": request.json_schema, "strict": True}}
    if request.tools:
        body["tools"] = request.tools
    return {**body, **(fields or {}), **extra}


class StreamedReply:
    """A reply read back chunk by chunk, or an unstreamed one at once as one chunk: its
    text (each piece handed to ``on_token``, as a ``Piece`` where the chunk carried
    extras), tool calls, finish reason, usage and the engine's own fields. Only choice 0
    is read: orla asks engines for one choice a request."""

    def __init__(self, on_token: Callable[[str], None] | None = None) -> None:
        self.on_token = on_token
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.finish = ""
        self.usage: dict[str, Any] = {}
        self.completion: dict[str, Any] = {}  # the extras, as they accumulate
        self.choice: dict[str, Any] = {}
        self.message: dict[str, Any] = {}
        self.logprobs: dict[str, Any] = {}
        self.delivered = False  # whether text reached ``on_token``: then never ask again
        self._extras = NO_EXTRAS  # the last piece's, reused while the chunks carry the same

    def add(self, chunk: dict[str, Any]) -> bool:
        """Read one chunk; whether it carried output (text, a tool call, reasoning)."""
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            self.usage = usage
        completion = {k: v for k, v in chunk.items() if k not in CHUNK_FIELDS}
        if completion:
            self.completion.update(completion)
        choices = chunk.get("choices")
        output = False
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                output = self._add_choice(choice, completion) or output
        return output

    def _add_choice(self, choice: dict[str, Any], completion: dict[str, Any]) -> bool:
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        content, tool_calls = delta.get("content"), delta.get("tool_calls")
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            self._add_logprobs(logprobs)
        if choice.keys() - CHOICE_FIELDS:  # the test alone in the common case
            self.choice.update((k, v) for k, v in choice.items() if k not in CHOICE_FIELDS)
        message = ({k: v for k, v in delta.items() if k not in DELTA_FIELDS and v is not None}
                   if delta.keys() - DELTA_FIELDS else {})
        for key, value in message.items():
            before = self.message.get(key)
            self.message[key] = (before + value if isinstance(before, str)
                                 and isinstance(value, str) else value)
        text = content if isinstance(content, str) else ""
        if text:
            self.parts.append(text)
        if self.on_token is not None and (text or message):
            # a delta of reasoning alone goes on as it comes, an empty piece with its extras
            self.delivered = True
            extras = self._piece_extras(completion, logprobs, message)
            self.on_token(text if extras is NO_EXTRAS else Piece(text, extras))
        for call in tool_calls if isinstance(tool_calls, list) else []:
            if isinstance(call, dict):
                _add_tool_delta(self.calls.setdefault(_index(call), {}), call)
        self.finish = choice.get("finish_reason") or self.finish
        return bool(content or tool_calls or message)

    def _piece_extras(self, completion: dict[str, Any], logprobs: Any,
                      message: dict[str, Any]) -> Extras:
        """The extras of a streamed piece; those of the piece before where only its
        completion fields came again, as they do in every chunk (``system_fingerprint``)."""
        if logprobs or message:
            return Extras(completion, {"logprobs": logprobs} if logprobs else {}, message)
        if not completion:
            return NO_EXTRAS
        if completion != self._extras.completion:
            self._extras = Extras(completion)
        return self._extras

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        for key, value in logprobs.items():
            if isinstance(value, list):
                self.logprobs.setdefault(key, []).extend(value)
            else:
                self.logprobs[key] = value

    def result(self, *, ttft_s: float | None, duration_s: float) -> EngineResult:
        details = self.usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        choice = {**self.choice, "logprobs": self.logprobs} if self.logprobs else self.choice
        return EngineResult(
            content="".join(self.parts),
            tool_calls=[ToolCall(id=c.get("id", ""), name=c.get("name", ""),
                                 arguments=c.get("arguments", ""))
                        for _, c in sorted(self.calls.items())],
            finish_reason=self.finish,
            prompt_tokens=as_integer(self.usage.get("prompt_tokens")) or 0,
            completion_tokens=as_integer(self.usage.get("completion_tokens")) or 0,
            cached_tokens=as_integer(cached) or 0, ttft_s=ttft_s, duration_s=duration_s,
            extras=Extras(self.completion, choice, self.message,
                          {k: v for k, v in self.usage.items() if k not in USAGE_FIELDS}))


def completion_chunk(completion: dict[str, Any]) -> dict[str, Any]:
    """An unstreamed ``chat.completion`` as one chunk whose choices carry their messages as
    deltas: what ``StreamedReply.add`` reads into the same result and extras as had it
    streamed. One without a choice holding a message is a ``ValueError``."""
    choices = completion.get("choices")
    choices = [choice for choice in choices if isinstance(choice, dict)
               and isinstance(choice.get("message"), dict)
               ] if isinstance(choices, list) else []
    if not choices:
        raise ValueError("it has no choice with a message")
    return {**completion, "choices": [{**choice, "delta": _as_delta(choice["message"])}
                                      for choice in choices]}


def _as_delta(message: dict[str, Any]) -> dict[str, Any]:
    """A message as one delta: its tool calls numbered by their place in the list, as
    streamed ones are (some engines give every call of an answer ``index`` 0)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    return {**message, "tool_calls": [{**call, "index": number} if isinstance(call, dict)
                                      else call for number, call in enumerate(calls)]}


def _index(call: dict[str, Any]) -> int:
    index = call.get("index", 0)
    return index if isinstance(index, int) else 0


def _add_tool_delta(acc: dict[str, str], delta: dict[str, Any]) -> None:
    if delta.get("id"):
        acc["id"] = str(delta["id"])
    function = delta.get("function")
    function = function if isinstance(function, dict) else {}
    if function.get("name"):
        acc["name"] = acc.get("name", "") + str(function["name"])
    if function.get("arguments"):
        acc["arguments"] = acc.get("arguments", "") + str(function["arguments"])


def error_message(error: Any) -> str:
    """The message of an error envelope's ``error`` (or of whatever came instead)."""
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error)[:500]
