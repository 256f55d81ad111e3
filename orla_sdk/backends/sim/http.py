"""The simulated engine behind the HTTP surface of a real one, in process, stdlib only.

    url, stop = serve_http(SimEngine("qwen3-8b", clock="real"))
    backend = OpenAICompatibleBackend(orla.backends.sglang("sim", url=url))

Endpoints: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream``;
a last usage chunk with ``stream_options.include_usage``), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text; llama.cpp's names and ``llamacpp:``
prefix, so ``LlamaCppControl.metrics`` reads them), ``POST /flush_cache`` (SGLang) and
``POST /reset_prefix_cache`` (vLLM), ``GET /slots`` and ``POST /slots/{id}?action=erase``,
``save`` and ``restore`` (llama.cpp). Request fields of the engines are understood:
``id_slot`` (llama.cpp) and ``priority`` (SGLang's sense: higher is served first).

The engine runs on an event loop in a thread of its own; HTTP requests are served by a
``ThreadingHTTPServer`` in another thread and handed to that loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.sim.engine import METRICS, SimCall, SimEngine
from orla_sdk.backends.wire import chat_request, message_json, usage_json
from orla_sdk.errors import BackendError
from orla_sdk.loop_thread import LoopThread

T = TypeVar("T")


def serve_http(engine: SimEngine, host: str = "127.0.0.1",
               port: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve ``engine`` at ``http://host:port`` (a free port for 0); returns the URL and a
    function that stops the server and the engine's loop."""
    loop_thread = LoopThread("sim-engine")
    handler = type("SimHandler", (_Handler,), {"engine": engine, "loop_thread": loop_thread})
    loop_thread.start()
    server = _Server((host, port), handler)
    server.daemon_threads = True
    http_thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="sim-http",
                                   daemon=True)
    http_thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        loop_thread.stop()

    return f"http://{host}:{server.server_address[1]}", stop


class _Server(ThreadingHTTPServer):
    request_queue_size = 2048  # the listen backlog: many clients connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its kept-alive connection is no error; others are printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def prometheus(metrics: dict[str, float]) -> str:
    lines = []
    for name, value in metrics.items():
        kind, text = METRICS[name]
        lines += [f"# HELP llamacpp:{name} {text} (simulated)", f"# TYPE llamacpp:{name} {kind}",
                  f"llamacpp:{name} {value:g}"]
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # as engines' own servers do: the stdlib writes a reply's headers and body in two
    # sends, and with Nagle's algorithm the body of a kept-alive reply can wait ~40 ms
    # for the client's delayed ACK
    disable_nagle_algorithm = True
    engine: SimEngine
    loop_thread: LoopThread

    def log_message(self, format: str, *args: Any) -> None:  # quiet, like a library
        pass

    # -- routing --
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": self.engine.profile.name, "object": "model", "created": 0,
                 "owned_by": "orla-sim"}]})
        elif path == "/metrics":
            text = prometheus(self._run(self.engine.metrics()))
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        elif path == "/slots":
            self._json(200, self._run(self.engine.slots()))
        else:
            self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        try:
            body = self._body()
        except ValueError as exc:
            self._error(400, str(exc))
            return
        if url.path == "/v1/chat/completions":
            self._chat(body)
        elif url.path in ("/flush_cache", "/reset_prefix_cache"):
            flushed = self._run(self.engine.flush())
            self._send(200, f"Cache flushed ({flushed} tokens).\n".encode(), "text/plain")
        elif url.path.startswith("/slots/"):
            self._slot_action(url.path.removeprefix("/slots/"), parse_qs(url.query), body)
        else:
            self._error(404, f"no route POST {url.path}")

    def _slot_action(self, slot: str, query: dict[str, list[str]],
                     body: dict[str, Any]) -> None:
        """llama.cpp's ``POST /slots/{id}?action=erase|save|restore``; save and restore
        name a file (``{"filename": ...}``) that the simulator keeps in memory."""
        action = query.get("action", [""])[0]
        if not slot.isdigit() or action not in ("erase", "save", "restore"):
            self._error(400, f"no slot action {action!r} on slot {slot!r}")
            return
        if action == "erase":
            erased = self._run(self.engine.erase(int(slot)))
            self._json(200, {"id_slot": int(slot), "n_erased": erased})
            return
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename:
            self._error(400, f"slot {action} needs a 'filename'")
            return
        try:
            if action == "save":
                answer = {"n_saved": self._run(self.engine.save(int(slot), filename))}
            else:
                answer = {"n_restored": self._run(self.engine.restore(int(slot), filename))}
        except BackendError as exc:
            self._error(400, str(exc))
            return
        self._json(200, {"id_slot": int(slot), "filename": filename, **answer})

    # -- chat completions --
    def _chat(self, body: dict[str, Any]) -> None:
        try:
            call = self._run(_submit(self.engine, chat_request(body)))
        except (ValueError, TypeError, KeyError, BackendError) as exc:
            self._error(400, str(exc))
            return
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(call, body, include_usage)
            return
        result = self._run(_wait(call.done))
        self._json(200, {**_envelope(call, body, "chat.completion"), "choices": [{
            "index": 0, "finish_reason": result.finish_reason, "message": message_json(result)}],
            "usage": usage_json(result), "timings": _timings(call)})

    def _stream(self, call: SimCall, body: dict[str, Any], include_usage: bool) -> None:
        """Server-sent events in chunked transfer encoding on a kept-alive connection, as
        llama.cpp's and vLLM's servers send them."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        envelope = _envelope(call, body, "chat.completion.chunk")
        first, *rest = _deltas(call)
        self._run(_wait(call.first_token))
        self._chunk(_event({**envelope, "choices": [
            {"index": 0, "delta": first, "finish_reason": None}]}))
        result = self._run(_wait(call.done))  # the rest of the reply comes in one burst
        events = [_event({**envelope, "choices": [
            {"index": 0, "delta": delta, "finish_reason": None}]}) for delta in rest]
        events.append(_event({**envelope, "choices": [
            {"index": 0, "delta": {}, "finish_reason": result.finish_reason}]}))
        if include_usage:
            events.append(_event({**envelope, "choices": [], "usage": usage_json(result),
                                  "timings": _timings(call)}))
        self._chunk(b"".join(events) + b"data: [DONE]\n\n")
        self._chunk(b"")  # the last chunk: the reply is over, the connection stays open

    # -- plumbing --
    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop_thread.call(work)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error",
                                      "code": status}})

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def _submit(engine: SimEngine, request: ChatRequest) -> SimCall:
    return engine.submit(request)


async def _wait(future: asyncio.Future[T]) -> T:
    return await asyncio.shield(future)


def _envelope(call: SimCall, body: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-sim-{call.order}", "object": kind, "created": int(time.time()),
            "model": body.get("model") or "sim", "system_fingerprint": "orla-sim"}


def _deltas(call: SimCall) -> list[dict[str, Any]]:
    """Stream deltas: the first token's, then the rest. A tool call streams its name first
    and its arguments after; text streams a token at a time."""
    reply = call.reply
    if reply.tool_calls:
        tool = reply.tool_calls[0]
        return [{"role": "assistant", "content": None, "tool_calls": [
                    {"index": 0, "id": tool.id, "type": "function",
                     "function": {"name": tool.name, "arguments": ""}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": tool.arguments}}]}]
    return [{"role": "assistant", "content": reply.tokens[0]},
            *({"content": token} for token in reply.tokens[1:])]


def _timings(call: SimCall) -> dict[str, Any]:
    """llama.cpp's per-request timings, in simulated milliseconds, plus the queue wait."""
    return {"cache_n": call.cached_tokens, "prompt_n": len(call.prompt) - call.cached_tokens,
            "prompt_ms": 1e3 * (call.first_token_at - call.admitted_at),
            "predicted_n": len(call.reply.tokens),
            "predicted_ms": 1e3 * (call.finished_at - call.first_token_at),
            "queue_ms": 1e3 * (call.admitted_at - call.arrival)}
