"""``orla serve``: an OpenAI-compatible HTTP proxy in front of orla's backends.

    with orla_sdk.serving.proxy.ProxyServer([orla.backends.llamacpp("local")],
                                            {"light": "local/smollm2-135m-instruct"}) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused")
        client.chat.completions.create(model="light", messages=[...],
                                       extra_headers={"X-Orla-Workflow": "ticket-42"})

Any framework or language reaches orla by changing its base URL. The request's
``model`` names a logical model, mapped to a backend and model as in ``orla.compile``.
Each call is tagged with a workflow, a stage and an agent: the headers
``X-Orla-Workflow``, ``X-Orla-Stage``, ``X-Orla-Agent`` and ``X-Orla-Priority``, or the
body fields of SGLang's proposed agent hints (``workflow_id``, ``agent_id``, ``step_id``,
``parent_step_id``), which are stripped before the request goes on. A call that names no
agent is given one: a fingerprint of its first message (``fp-...``), so that the calls
of one system prompt are one agent. A call without a workflow is a workflow of its own,
forgotten (and its cache dropped) when it ends.

The proxy is a ``ServingSession`` behind HTTP: a workflow is one of the session's runs
(its queue run and cache slots: on llama.cpp the calls of one of its conversations stay
on one slot, so their prefix is cached), a (stage, agent) of it one unit of work, whose
``StageRecord`` goes to the session's ``Report`` (``proxy.report``) labelled
``workflow``, ``stage`` and ``agent``. ``GET /v1/orla/workflows/{id}`` reads a
workflow's part of it; ``POST /v1/orla/workflows/{id}/complete`` settles the run (its
cache is dropped) and returns the cache log and the report, then forgets the workflow. A
workflow idle for ``workflow_idle_s`` (an hour unless told) is completed by the proxy
itself.

Other endpoints: ``GET /v1/models`` (the logical names), ``GET /v1/orla/report`` (every
known workflow), ``GET /openapi.json`` and ``GET /health``. Bearer-token auth is required
off loopback; bodies over ``max_body`` get 413. Every error comes back in OpenAI's error
envelope.

The HTTP side is Starlette under uvicorn (``pip install 'orla_sdk[proxy]'``), loaded by
``start()``; uvicorn serves on the session's own event loop, so a request's model call
runs where the session's runs live, without a hop between threads.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from orla_sdk.agents import AgentPolicy, fingerprint
from orla_sdk.backends.base import Backend, ChatRequest, ChatResult
from orla_sdk.backends.wire import Chunks, completion_json, error_json, error_status
from orla_sdk.errors import BackendError, MissingExtra, OrlaError, Refused
from orla_sdk.ir import BackendSpec, Plan, Target
from orla_sdk.mapping import normalize_mapping
from orla_sdk.runtime.call import call_model
from orla_sdk.runtime.context import StageContext
from orla_sdk.runtime.openai_shim import engine_request, open_stream
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.serving.report import Report
from orla_sdk.serving.session import ServingSession

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

HINTS = ("workflow_id", "agent_id", "step_id", "parent_step_id")  # SGLang's agent hints
DEFAULT_PRIORITY = 50
DEFAULT_WORKFLOW_IDLE_S = 3600.0  # a workflow idle this long is completed
REPORT_GROUPS = ("workflow", "stage", "agent")
STOP_TIMEOUT_S = 10.0


class HttpError(Exception):
    """An answer other than 200, with OpenAI's error envelope."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


# ---- tags ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tags:
    """Which workflow, stage and agent a call belongs to; ``tagged`` is False for a call
    that named no workflow (it got a fresh one)."""

    workflow: str
    stage: str
    agent: str
    priority: int
    tagged: bool
    tenant: str = ""  # the name of the API token the call came with

    def labels(self) -> dict[str, Any]:
        """The report labels of the call's unit (``priority`` is the unit's own)."""
        return {"workflow": self.workflow, "stage": self.stage, "agent": self.agent or None,
                "priority": self.priority}


def read_tags(headers: Mapping[str, str], body: dict[str, Any]) -> Tags:
    """The call's tags from its headers, else from the agent hints in ``body`` (which are
    removed from it)."""
    hints = {name: body.pop(name) for name in HINTS if name in body}
    workflow = headers.get("X-Orla-Workflow") or _text(hints.get("workflow_id"))
    agent = headers.get("X-Orla-Agent") or _text(hints.get("agent_id"))
    stage = headers.get("X-Orla-Stage") or agent or "default"
    if not agent and isinstance(body.get("messages"), list):
        agent = fingerprint(body["messages"])  # undeclared: named by its first message
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
class Activity:
    """When a known workflow was last used and how many of its calls are running: what
    the idle sweep reads. What its calls cost is in the session's report."""

    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0


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
    """The proxy: a ``ServingSession`` (its loop thread and ``BackendPool``) with uvicorn
    serving on that loop. ``clients`` supplies ready-made backends by name, as for
    ``BackendPool``."""

    def __init__(self, backends: Sequence[BackendSpec], mapping: Mapping[str, str | Target],
                 host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 max_body: int = 1 << 20, *, clients: Mapping[str, Backend] | None = None,
                 slots: int = 4, workflow_idle_s: float = DEFAULT_WORKFLOW_IDLE_S,
                 policies: Sequence[AgentPolicy | str] = (),
                 tokens: Mapping[str, str] | None = None) -> None:
        tokens = {**({"": token} if token else {}), **(tokens or {})}
        if not tokens and not is_loopback(host):
            raise OrlaError(f"refusing to serve on {host} without a token: give --token or "
                            "ORLA_PROXY_TOKEN, or listen on 127.0.0.1")
        if max_body < 1:
            raise OrlaError(f"max_body must be positive, not {max_body}")
        self.targets = serving_targets(backends, mapping)
        self.host, self.port, self.max_body = host, port, max_body
        self.tokens = tokens  # tenant name -> bearer token ("" for the one --token)
        self.workflow_idle_s = workflow_idle_s
        self.plan = Plan(name="orla-proxy", backends=list(backends), mapping=dict(self.targets),
                         runnable=False)
        self.session = ServingSession(
            self.plan, pool=BackendPool(backends, clients=clients, slots=slots,
                                        policies=policies),
            report=Report(groups=REPORT_GROUPS))
        self.workflows: dict[str, Activity] = {}  # known workflows; touched on the loop only
        self._swept_at = time.monotonic()
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._serving: Future[None] | None = None

    @property
    def pool(self) -> BackendPool:
        return self.session.pool

    @property
    def report(self) -> Report:
        """The session's report: one row per (workflow, stage, agent) unit."""
        return self.session.report

    # -- lifecycle --
    def start(self) -> str:
        """Start the backends and the server; returns the proxy's URL (no ``/v1``)."""
        if self._server is not None:
            return self.url
        uvicorn = _import_uvicorn()
        listener = _listen(self.host, self.port)
        try:
            self.session.start()
            config = uvicorn.Config(
                app(self), lifespan="off", log_config=None, log_level="warning",
                access_log=False, ws="none", server_header=False,
                headers=[("server", "orla-proxy")], timeout_graceful_shutdown=5)
            self._server = uvicorn.Server(config)
            self._serving = asyncio.run_coroutine_threadsafe(
                self._server.serve(sockets=[listener]), self.session.loop)
            self._wait_started()
        except BaseException:
            self.stop()
            listener.close()
            raise
        port = listener.getsockname()[1]
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{port}"
        return self.url

    def _wait_started(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self._server is not None and not self._server.started:
            if self._serving is not None and self._serving.done():
                self._serving.result()  # a failure to start
                raise OrlaError("the proxy's HTTP server stopped while starting")
            if time.monotonic() > deadline:
                raise OrlaError("the proxy's HTTP server did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop the server (its connections end, its socket closes), then the session:
        every workflow's cache is dropped, the backends and any engine the pool started
        stop, and the loop thread ends."""
        server, serving, self._server, self._serving = self._server, self._serving, None, None
        try:
            if server is not None and serving is not None:
                server.should_exit = True
                try:
                    serving.result(timeout=STOP_TIMEOUT_S)
                except TimeoutError:
                    server.force_exit = True
                    serving.result(timeout=STOP_TIMEOUT_S)
        finally:
            self.session.close()
            self.workflows.clear()
            self.url = ""

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    # -- requests (on the session's loop) --
    def target(self, model: Any) -> Target:
        target = self.targets.get(str(model))
        if target is None:
            raise HttpError(404, f"model {model!r} is not served here; the models are "
                            f"{sorted(self.targets)}", code="model_not_found")
        return target

    def unit(self, tags: Tags) -> StageContext:
        """The session's unit of the call's (workflow, stage, agent)."""
        return self.session.unit(tags.workflow, f"{tags.stage}\x00{tags.agent}", tags.stage,
                                 tags.labels())

    async def chat(self, tags: Tags, target: Target, request: ChatRequest) -> ChatResult:
        """One call in the workflow's run, through the backend's queue at the call's
        priority and the run's cache slot; recorded in its unit's record."""
        await self._expire_idle()
        activity = self.workflows.setdefault(tags.workflow, Activity()) if tags.tagged else None
        unit = self.unit(tags)
        if activity is not None:
            activity.in_flight += 1
        try:
            return await call_model(replace(unit, priority=tags.priority, tenant=tags.tenant),
                                    self.pool[target.backend], target, request)
        except BackendError as exc:
            unit.record.status, unit.record.error = "failed", str(exc)
            raise
        finally:
            if activity is not None:
                activity.in_flight -= 1
                activity.last_used = time.monotonic()
            else:  # nobody can complete it: drop its slot and its row now
                await self.session.settle(tags.workflow, "over")
                self._forget(tags.workflow)

    async def _expire_idle(self) -> None:
        """Complete the workflows idle for ``workflow_idle_s``: a client that never sends
        the workflow-complete call must not hold cache slots and records forever. Swept
        at most every tenth of that time."""
        now = time.monotonic()
        if now - self._swept_at < self.workflow_idle_s / 10:
            return
        self._swept_at = now
        idle = [w for w, activity in self.workflows.items()
                if not activity.in_flight and now - activity.last_used >= self.workflow_idle_s]
        for workflow in idle:
            await self.complete(workflow)

    def workflow_report(self, workflow: str) -> dict[str, Any]:
        """The workflow's part of the report: totals, by stage and by agent, and the
        units a call of which failed."""
        if workflow not in self.workflows:
            raise HttpError(404, f"no workflow {workflow!r} is known here")
        report = self.report
        rows = report.rows(workflow=workflow)
        return {
            "workflow": workflow,
            "total": report.row_totals(rows),
            "by_stage": report.by("stage", workflow=workflow),
            "by_agent": report.by("agent", workflow=workflow),
            "errors": [{"stage": row.labels["stage"], "agent": row.labels["agent"],
                        "error": row.record.error}
                       for row in rows if row.record.status == "failed"],
        }

    async def complete(self, workflow: str) -> dict[str, Any]:
        """The end-of-workflow cache action; the workflow is then forgotten."""
        report = self.workflow_report(workflow)
        log = await self.session.settle(workflow, "over")
        del self.workflows[workflow]
        self._forget(workflow)
        return {"workflow": workflow, "cache_log": log, "report": report}

    def _forget(self, workflow: str) -> None:
        """Drop the workflow's rows from the report (the rest stay, in their order)."""
        self.report.discard(workflow=workflow)


def _import_uvicorn() -> Any:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise MissingExtra(exc.name or "starlette", "proxy", "orla serve") from None
    return uvicorn


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use fails ``start()`` itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


# ---- HTTP -----------------------------------------------------------------------------
WORKFLOW = "/v1/orla/workflows/{workflow:path}"


def app(proxy: ProxyServer) -> Starlette:
    """The proxy's Starlette app."""
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        raise MissingExtra("starlette", "proxy", "orla serve") from None

    def answer(status: int, data: Any, workflow: str | None = None) -> Response:
        headers = {} if workflow is None else {"X-Orla-Workflow": workflow}
        if status >= 400:  # the body may be unread: do not parse it as the next request
            headers["Connection"] = "close"
        if status == 429:  # a spent budget: asking again at once cannot help
            headers["x-should-retry"] = "false"
        return JSONResponse(data, status, headers=headers)

    def error(status: int, message: str, code: str | None = None) -> Response:
        return answer(status, error_json(status, message, code))

    def authorize(request: Request) -> str:
        """The name of the tenant whose token the request carries ("" without tokens)."""
        if not proxy.tokens:
            return ""
        given = request.headers.get("Authorization", "").encode()
        for tenant, token in proxy.tokens.items():
            if hmac.compare_digest(given, f"Bearer {token}".encode()):
                return tenant
        raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                        code="invalid_api_key")

    def endpoint(handler: Callable[[Request], Coroutine[Any, Any, Response]],
                 public: bool = False) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """``handler`` behind the token; every failure an answer in OpenAI's envelope."""
        async def guarded(request: Request) -> Response:
            try:
                if not public:
                    request.state.tenant = authorize(request)
                return await handler(request)
            except HttpError as exc:
                return error(exc.status, exc.message, exc.code)
            except Refused as exc:  # an agent policy: a budget is spent
                return error(429, str(exc), "insufficient_quota")
            except BackendError as exc:
                return error(error_status(exc), str(exc))
            except ClientDisconnect:
                return error(400, "the client went away")
            except Exception as exc:
                return error(500, f"the proxy failed: {type(exc).__name__}: {exc}")
        return guarded

    async def no_route(request: Request, exc: Exception) -> Response:
        try:
            authorize(request)
        except HttpError as denied:
            return error(denied.status, denied.message, denied.code)
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return error(status, f"no route {request.method} {request.url.path}")

    async def body(request: Request) -> dict[str, Any]:
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "the Content-Length is not a number") from None
        if length > proxy.max_body:
            raise HttpError(413, f"the body is {length} bytes; the limit is {proxy.max_body}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > proxy.max_body:
                raise HttpError(413, f"the body is over the limit of {proxy.max_body} bytes")
        try:
            parsed = json.loads(bytes(data) or b"{}")
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise HttpError(400, "the body must be a JSON object")
        return parsed

    async def health(request: Request) -> Response:
        return answer(200, {"status": "ok"})

    async def models(request: Request) -> Response:
        return answer(200, {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "orla"}
            for name in sorted(proxy.targets)]})

    async def openapi(request: Request) -> Response:
        return answer(200, openapi_schema(proxy))

    async def workflow_report(request: Request) -> Response:
        return answer(200, proxy.workflow_report(_workflow_id(request)))

    async def complete(request: Request) -> Response:
        return answer(200, await proxy.complete(_workflow_id(request)))

    async def whole_report(request: Request) -> Response:
        return answer(200, proxy.report.to_json())

    async def chat(request: Request) -> Response:
        data = await body(request)
        target = proxy.target(data.get("model"))
        tags = replace(read_tags(request.headers, data), tenant=request.state.tenant)
        if not data.get("stream"):
            result = await proxy.chat(tags, target, _request(data, target, tags))
            return answer(200, completion_json(data, result), workflow=tags.workflow)
        call = await open_stream(lambda put: proxy.chat(tags, target,
                                                        _request(data, target, tags, put)),
                                 Chunks.of(data))
        return StreamingResponse(call.events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Orla-Workflow": tags.workflow})

    routes = [
        Route("/health", endpoint(health, public=True), methods=["GET"]),
        Route("/openapi.json", endpoint(openapi), methods=["GET"]),
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/v1/chat/completions", endpoint(chat), methods=["POST"]),
        Route("/v1/orla/report", endpoint(whole_report), methods=["GET"]),
        Route(WORKFLOW + "/complete", endpoint(complete), methods=["POST"]),
        Route(WORKFLOW, endpoint(workflow_report), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: no_route})


def _request(body: dict[str, Any], target: Target, tags: Tags,
             on_token: Callable[[str], None] | None = None) -> ChatRequest:
    try:
        return engine_request(body, target, priority=tags.priority, on_token=on_token)
    except (TypeError, ValueError) as exc:
        raise HttpError(400, str(exc)) from None


def _workflow_id(request: Request) -> str:
    workflow = str(request.path_params.get("workflow", ""))
    if not workflow or workflow.startswith("/"):
        raise HttpError(404, "name a workflow: /v1/orla/workflows/{id}")
    return workflow


# ---- OpenAPI --------------------------------------------------------------------------
def openapi_schema(proxy: ProxyServer) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the proxy's endpoints, served at ``/openapi.json``."""
    def ok(description: str, schema: dict[str, Any] | None = None,
           media: str = "application/json") -> dict[str, Any]:
        content = {media: {"schema": schema or {"type": "object"}}}
        return {"200": {"description": description, "content": content},
                "default": {"description": "an error, in OpenAI's error envelope",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Error"}}}}}

    workflow = [{"name": "workflow", "in": "path", "required": True,
                 "schema": {"type": "string"}}]
    tag_headers = [{"name": name, "in": "header", "required": False, "description": text,
                    "schema": {"type": "integer", "minimum": 0, "maximum": 100}
                    if name == "X-Orla-Priority" else {"type": "string"}}
                   for name, text in (
                       ("X-Orla-Workflow", "the workflow run (else the body's workflow_id)"),
                       ("X-Orla-Stage", "the stage (default: the agent, else 'default')"),
                       ("X-Orla-Agent", "the agent (else the body's agent_id)"),
                       ("X-Orla-Priority", "0..100, higher first (default 50)"))]
    report = {"$ref": "#/components/schemas/WorkflowReport"}
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "orla serve", "version": "1",
                 "description": "An OpenAI-compatible proxy in front of orla's backends."},
        "paths": {
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI chat completions, through orla's queues and cache slots",
                "parameters": tag_headers,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ChatRequest"}}}},
                "responses": {
                    **ok("a chat.completion"),
                    "200": {"description": "a chat.completion, or server-sent "
                            "chat.completion.chunk events with stream=true", "content": {
                                "application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {"type": "string"}}}}}}},
            "/v1/models": {"get": {"summary": "the logical model names",
                                   "responses": ok("a list of models")}},
            "/v1/orla/report": {"get": {"summary": "the report of every known workflow",
                                        "responses": ok("the serving report")}},
            "/v1/orla/workflows/{workflow}": {"get": {
                "summary": "a workflow's report", "parameters": workflow,
                "responses": ok("its report", report)}},
            "/v1/orla/workflows/{workflow}/complete": {"post": {
                "summary": "end a workflow: drop its cache and forget it",
                "parameters": workflow,
                "responses": ok("the cache log and the final report", {
                    "type": "object", "properties": {
                        "workflow": {"type": "string"},
                        "cache_log": {"type": "array", "items": {"type": "object"}},
                        "report": report}})}},
            "/health": {"get": {"summary": "liveness, without auth", "security": [],
                                "responses": ok("ok")}},
            "/openapi.json": {"get": {"summary": "this description",
                                      "responses": ok("the OpenAPI description")}},
        },
        "components": {"schemas": {
            "ChatRequest": {"type": "object", "required": ["model", "messages"],
                            "properties": {
                                "model": {"type": "string", "enum": sorted(proxy.targets)},
                                "messages": {"type": "array", "items": {"type": "object"}},
                                "stream": {"type": "boolean"},
                                "workflow_id": {"type": "string"},
                                "agent_id": {"type": "string"},
                                "priority": {"type": "integer", "minimum": 0,
                                             "maximum": 100}}},
            "Totals": {"type": "object", "properties": {
                key: {"type": "number"} for key in (
                    "calls", "prompt_tokens", "completion_tokens", "cached_tokens",
                    "cost_usd", "ttft_s_median", "queue_wait_s", "engine_s")}},
            "WorkflowReport": {"type": "object", "properties": {
                "workflow": {"type": "string"},
                "total": {"$ref": "#/components/schemas/Totals"},
                "by_stage": {"type": "object", "additionalProperties": {
                    "$ref": "#/components/schemas/Totals"}},
                "by_agent": {"type": "object", "additionalProperties": {
                    "$ref": "#/components/schemas/Totals"}},
                "errors": {"type": "array", "items": {"type": "object"}}}},
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "code": {"type": ["string", "integer", "null"]}}}}},
        }},
    }
    if proxy.tokens:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                              "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema
