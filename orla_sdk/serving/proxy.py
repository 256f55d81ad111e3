"""``orla serve``: an OpenAI-compatible HTTP proxy in front of orla's backends.

    with orla.proxy.ProxyServer([orla.backends.llamacpp("local")],
                                {"light": "local/smollm2-135m-instruct"}) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused")
        client.chat.completions.create(model="light", messages=[...],
                                       extra_headers={"X-Orla-Workflow": "ticket-42"})

Any framework or language reaches orla by changing its base URL. The request's
``model`` names a logical model, mapped to a backend and model as in ``orla.compile``.
Each call is tagged with a workflow, a stage and an agent: the headers
``X-Orla-Workflow``, ``X-Orla-Stage``, ``X-Orla-Agent`` and ``X-Orla-Priority``, or the
body fields of SGLang's proposed agent hints (``workflow_id``, ``agent_id``, ``step_id``,
``parent_step_id``), which are stripped before the request goes on. A call without a
workflow is a workflow of its own, forgotten (and its cache dropped) when it ends.

Calls go through orla's runtime: the backend's queue (the stage is the queue's stage,
the workflow its run), the memory manager's pin (a workflow's calls on llama.cpp stay on
one slot, so its prefix is cached) and per-stage records, read at
``GET /v1/orla/workflows/{id}``. ``POST /v1/orla/workflows/{id}/complete`` drops the
workflow's cache and returns the cache log and the report. A workflow idle for
``workflow_idle_s`` (an hour unless told) is completed by the proxy itself.

Other endpoints: ``GET /v1/models`` (the logical names) and ``GET /health``. Bearer-token
auth is required off loopback; bodies over ``max_body`` get 413. Every error comes back
in OpenAI's error envelope.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from orla_sdk.backends.base import Backend, ChatRequest, ChatResult
from orla_sdk.errors import BackendError
from orla_sdk.errors import OrlaError
from orla_sdk.ir import BackendSpec, Target
from orla_sdk.mapping import normalize_mapping
from orla_sdk.runtime.openai_shim import (
    Chunks,
    completion_json,
    engine_request,
    error_json,
    error_status,
)
from orla_sdk.runtime.pool import BackendPool

T = TypeVar("T")
HINTS = ("workflow_id", "agent_id", "step_id", "parent_step_id")  # SGLang's agent hints
DEFAULT_PRIORITY = 50
WORKFLOWS = "/v1/orla/workflows/"
DEFAULT_WORKFLOW_IDLE_S = 3600.0  # a workflow idle this long is completed


class HttpError(Exception):
    """An answer other than 200, with OpenAI's error envelope."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


# ---- tags and records -----------------------------------------------------------------
@dataclass(frozen=True)
class Tags:
    """Which workflow, stage and agent a call belongs to; ``tagged`` is False for a call
    that named no workflow (it got a fresh one)."""

    workflow: str
    stage: str
    agent: str
    priority: int
    tagged: bool


def read_tags(headers: Message, body: dict[str, Any]) -> Tags:
    """The call's tags from its headers, else from the agent hints in ``body`` (which are
    removed from it)."""
    hints = {name: body.pop(name) for name in HINTS if name in body}
    workflow = headers.get("X-Orla-Workflow") or _text(hints.get("workflow_id"))
    agent = headers.get("X-Orla-Agent") or _text(hints.get("agent_id"))
    stage = headers.get("X-Orla-Stage") or agent or "default"
    priority = _priority(headers.get("X-Orla-Priority"), body.get("priority"))
    return Tags(workflow or f"anon-{uuid.uuid4().hex[:12]}", stage, agent, priority,
                tagged=bool(workflow))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _priority(header: str | None, field_value: Any) -> int:
    value = header if header is not None else field_value
    if value is None:
        return DEFAULT_PRIORITY
    try:
        priority = int(value)
    except (TypeError, ValueError):
        raise HttpError(400, f"priority {value!r} is not an integer 0..100") from None
    if not 0 <= priority <= 100:
        raise HttpError(400, f"priority {priority} is outside 0..100")
    return priority


@dataclass
class StageStats:
    """The calls of one (workflow, stage), summed."""

    agent: str = ""
    calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float = 0.0        # summed over the calls
    queue_wait_s: float = 0.0  # summed over the calls

    def add(self, result: ChatResult, waited: float) -> None:
        self.calls += 1
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.cached_tokens += result.cached_tokens
        self.ttft_s += result.ttft_s
        self.queue_wait_s += waited


@dataclass
class WorkflowRecord:
    id: str
    stages: dict[str, StageStats] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    def stage(self, tags: Tags) -> StageStats:
        stats = self.stages.setdefault(tags.stage, StageStats(agent=tags.agent))
        stats.agent = tags.agent or stats.agent
        return stats

    def report(self) -> dict[str, Any]:
        stages = {name: {**asdict(s), "ttft_s_mean": s.ttft_s / s.calls if s.calls else None}
                  for name, s in self.stages.items()}
        totals = {key: sum(s[key] for s in stages.values())
                  for key in ("calls", "errors", "prompt_tokens", "completion_tokens",
                              "cached_tokens")}
        return {"workflow": self.id, **totals, "stages": stages}


# ---- configuration --------------------------------------------------------------------
def serving_targets(backends: Sequence[BackendSpec],
                    mapping: Mapping[str, str | Target]) -> dict[str, Target]:
    """Logical model -> target, each on one of ``backends``."""
    names = {spec.name for spec in backends}
    targets: dict[str, Target] = {}
    for logical, value in normalize_mapping(mapping).items():
        if not isinstance(value, Target):
            raise OrlaError(f"the proxy maps {logical!r} to a mapper; give 'backend/model'")
        if value.backend not in names:
            raise OrlaError(f"{logical!r} is mapped to backend {value.backend!r}, which is not "
                            f"among the proxy's backends {sorted(names)}")
        targets[logical] = value
    if not targets:
        raise OrlaError("the proxy needs at least one logical model, e.g. "
                        "{'light': 'local/smollm2-135m-instruct'}")
    return targets


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the proxy ------------------------------------------------------------------------
class ProxyServer:
    """The proxy: its own event loop thread, ``BackendPool`` and HTTP server thread.
    ``clients`` supplies ready-made backends by name, as for ``BackendPool``."""

    def __init__(self, backends: Sequence[BackendSpec], mapping: Mapping[str, str | Target],
                 host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 max_body: int = 1 << 20, *, clients: Mapping[str, Backend] | None = None,
                 slots: int = 4, workflow_idle_s: float = DEFAULT_WORKFLOW_IDLE_S) -> None:
        if not token and not is_loopback(host):
            raise OrlaError(f"refusing to serve on {host} without a token: give --token or "
                            "ORLA_PROXY_TOKEN, or listen on 127.0.0.1")
        if max_body < 1:
            raise OrlaError(f"max_body must be positive, not {max_body}")
        self.targets = serving_targets(backends, mapping)
        self.host, self.port, self.token, self.max_body = host, port, token, max_body
        self.pool = BackendPool(backends, clients=clients, slots=slots)
        self.workflows: dict[str, WorkflowRecord] = {}  # touched on the loop thread only
        self.workflow_idle_s = workflow_idle_s
        self._swept_at = time.monotonic()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle --
    def start(self) -> str:
        """Start the backends and the server; returns the proxy's URL (no ``/v1``)."""
        if self._loop is not None:
            return self.url
        self._loop = asyncio.new_event_loop()
        self._thread(self._loop.run_forever, "orla-proxy-loop")
        try:
            self.call(self.pool.start())
            self._server = _http_server(self.host, self.port, self)
        except BaseException:
            self.stop()
            raise
        self._thread(lambda: _serve_forever(self._server), "orla-proxy-http")
        port = self._server.server_address[1]
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{port}"
        return self.url

    def stop(self) -> None:
        """Stop the server, the backends (and any engine the pool started) and the loop."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(_close(self.pool), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            for thread in self._threads:
                thread.join(timeout=10)
            self._threads.clear()
            loop.close()

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def _thread(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the proxy's loop and wait for it (from another thread)."""
        return self.submit(work).result()

    def submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        if self._loop is None:
            work.close()
            raise OrlaError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    # -- requests (on the loop) --
    def target(self, model: Any) -> Target:
        target = self.targets.get(str(model))
        if target is None:
            raise HttpError(404, f"model {model!r} is not served here; the models are "
                            f"{sorted(self.targets)}", code="model_not_found")
        return target

    async def chat(self, tags: Tags, target: Target, request: ChatRequest) -> ChatResult:
        """One call through the backend's queue and the workflow's slot; recorded."""
        await self._expire_idle()
        record = self._record(tags) if tags.tagged else None
        stats = record.stage(tags) if record is not None else None
        if record is not None:
            record.in_flight += 1
        try:
            served = await self.pool.call(target.backend, request, run_id=tags.workflow,
                                          stage=tags.stage, priority=tags.priority)
        except BackendError:
            if stats is not None:
                stats.errors += 1
            raise
        finally:
            if record is not None:
                record.in_flight -= 1
                record.last_used = time.monotonic()
            else:  # nobody can complete it: drop its slot now
                await self.pool.memory.end_run(tags.workflow)
                self.pool.memory.take_log(tags.workflow)
        if stats is not None:
            stats.add(served.result, served.queue_wait_s)
        return served.result

    async def _expire_idle(self) -> None:
        """Complete the workflows idle for ``workflow_idle_s``: a client that never sends
        the workflow-complete call must not hold cache slots and records forever. Swept
        at most every tenth of that time."""
        now = time.monotonic()
        if now - self._swept_at < self.workflow_idle_s / 10:
            return
        self._swept_at = now
        idle = [w for w, record in self.workflows.items()
                if not record.in_flight and now - record.last_used >= self.workflow_idle_s]
        for workflow in idle:
            await self.complete(workflow)

    def _record(self, tags: Tags) -> WorkflowRecord:
        return self.workflows.setdefault(tags.workflow, WorkflowRecord(tags.workflow))

    async def report(self, workflow: str) -> dict[str, Any]:
        record = self.workflows.get(workflow)
        if record is None:
            raise HttpError(404, f"no workflow {workflow!r} is known here")
        return record.report()

    async def complete(self, workflow: str) -> dict[str, Any]:
        """The end-of-workflow cache action; the workflow is then forgotten."""
        report = await self.report(workflow)
        ended = await self.pool.memory.end_run(workflow)
        log = [*self.pool.memory.take_log(workflow), *ended]
        del self.workflows[workflow]
        return {"workflow": workflow, "cache_log": log, "report": report}


async def _close(pool: BackendPool) -> None:
    await pool.aclose()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _http_server(host: str, port: int, proxy: ProxyServer) -> ThreadingHTTPServer:
    handler = type("ProxyHandler", (_Handler,), {"proxy": proxy})
    server_cls = _HTTP6Server if ":" in host else ThreadingHTTPServer
    server = server_cls((host, port), handler)
    server.daemon_threads = True
    return server


class _HTTP6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _serve_forever(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.serve_forever(poll_interval=0.05)


# ---- HTTP -----------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "orla-proxy"
    timeout = 60.0  # seconds a client may stall while sending; then its connection closes
    proxy: ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet, like a library
        pass

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _guard(self, route: Callable[[str], None]) -> None:
        """Route the request; every failure is an answer in OpenAI's envelope."""
        path = urlsplit(self.path).path
        try:
            if path != "/health":
                self._authorize()
            route(path)
        except HttpError as exc:
            self._error(exc.status, exc.message, exc.code)
        except BackendError as exc:
            self._error(error_status(exc), str(exc))
        except OSError:  # the client went away
            self.close_connection = True
        except Exception as exc:
            self._error(500, f"the proxy failed: {type(exc).__name__}: {exc}")

    def _authorize(self) -> None:
        token = self.proxy.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                            code="invalid_api_key")

    def _get(self, path: str) -> None:
        if path == "/health":
            self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "orla"}
                for name in sorted(self.proxy.targets)]})
        elif path.startswith(WORKFLOWS) and "/" not in path.removeprefix(WORKFLOWS):
            self._json(200, self.proxy.call(self.proxy.report(_workflow_id(path))))
        else:
            raise HttpError(404, f"no route GET {path}")

    def _post(self, path: str) -> None:
        body = self._body()
        if path == "/v1/chat/completions":
            self._chat(body)
        elif path.startswith(WORKFLOWS) and path.endswith("/complete"):
            workflow = _workflow_id(path.removesuffix("/complete"))
            self._json(200, self.proxy.call(self.proxy.complete(workflow)))
        else:
            raise HttpError(404, f"no route POST {path}")

    def _body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "the Content-Length is not a number") from None
        if length < 0:
            raise HttpError(400, "the Content-Length is negative")
        if length > self.proxy.max_body:
            raise HttpError(413, f"the body is {length} bytes; the limit is "
                            f"{self.proxy.max_body}")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body

    # -- chat completions --
    def _chat(self, body: dict[str, Any]) -> None:
        target = self.proxy.target(body.get("model"))
        tags = read_tags(self.headers, body)
        if body.get("stream"):
            self._stream(body, tags, target)
            return
        result = self.proxy.call(self.proxy.chat(tags, target, _request(body, target, tags)))
        self._json(200, completion_json(body, result), workflow=tags.workflow)

    def _stream(self, body: dict[str, Any], tags: Tags, target: Target) -> None:
        pieces: queue.Queue[str | None] = queue.Queue()
        request = _request(body, target, tags, pieces.put)
        future = self.proxy.submit(_feed(self.proxy.chat(tags, target, request), pieces.put))
        first = pieces.get()
        if first is None:
            future.result()  # a failure before the first token is an error status
        chunks = Chunks.of(body)
        self._start_events(tags.workflow)
        try:
            piece = first
            while piece is not None:
                self._write(chunks.piece(piece))
                piece = pieces.get()
            try:
                events = list(chunks.end(future.result()))
            except BackendError as exc:
                events = [chunks.error(exc)]
            for event in events:
                self._write(event)
        finally:
            future.cancel()

    # -- plumbing --
    def _start_events(self, workflow: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("X-Orla-Workflow", workflow)
        self.end_headers()
        self.close_connection = True

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _json(self, status: int, data: Any, workflow: str | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if workflow is not None:
            self.send_header("X-Orla-Workflow", workflow)
        if status >= 400:  # the body may be unread: do not parse it as the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        envelope = error_json(status, message)
        envelope["error"]["code"] = code
        try:
            self._json(status, envelope)
        except OSError:
            self.close_connection = True


def _request(body: dict[str, Any], target: Target, tags: Tags,
             on_token: Callable[[str], None] | None = None) -> ChatRequest:
    try:
        return engine_request(body, target, priority=tags.priority, on_token=on_token)
    except (TypeError, ValueError) as exc:
        raise HttpError(400, str(exc)) from None


async def _feed(work: Coroutine[Any, Any, ChatResult],
                sink: Callable[[str | None], None]) -> ChatResult:
    try:
        return await work
    finally:
        sink(None)


def _workflow_id(path: str) -> str:
    workflow = unquote(path.removeprefix(WORKFLOWS))
    if not workflow:
        raise HttpError(404, "name a workflow: /v1/orla/workflows/{id}")
    return workflow
