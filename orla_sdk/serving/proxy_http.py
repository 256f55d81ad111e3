"""The proxy's HTTP surface: a Starlette app over a ``ProxyServer``.

Every endpoint but ``/health`` sits behind the bearer tokens (when the proxy has any); the
token says which tenant calls. Every failure is an answer in OpenAI's error envelope:
``HttpError`` with its own status, a refusal by an agent policy 429, a backend's failure
the status ``wire.error_status`` gives it (with ``x-should-retry: false``: orla has
retried what was worth retrying), a client gone away 400, and anything unforeseen 500.
A chat completion asks for ``n`` choices as ``n`` calls, answered together or streamed
with their ``index``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.wire import Chunks, completion_json, error_json, error_status
from orla_sdk.errors import BackendError, MissingExtra, Refused
from orla_sdk.ir import Target
from orla_sdk.runtime.openai_shim import Sink, engine_request, open_streams
from orla_sdk.serving.proxy_errors import HttpError, unforeseen
from orla_sdk.serving.proxy_input import (
    Tags,
    check_chat,
    choice_bodies,
    choices,
    parse_body,
    read_tags,
    streamed,
)
from orla_sdk.serving.proxy_openapi import openapi_schema

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from orla_sdk.serving.proxy import ProxyServer

WORKFLOW = "/v1/orla/workflows/{workflow:path}"
Handler = Callable[["Request"], Coroutine[Any, Any, "Response"]]


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

    def answer(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
        headers = dict(headers or {})
        if status >= 400:  # the body may be unread: do not parse it as the next request
            headers["Connection"] = "close"
            headers["x-should-retry"] = "false"  # orla retried what was worth retrying
        return JSONResponse(data, status, headers=headers)

    def error(status: int, message: str, code: str | None = None,
              param: str | None = None) -> Response:
        return answer(status, error_json(status, message, code, param))

    bearers = {tenant: f"Bearer {token}".encode() for tenant, token in proxy.tokens.items()}

    def authorize(request: Request) -> str:
        """The tenant whose token the request carries ("" without tenant tokens)."""
        if not bearers:
            return ""
        given = request.headers.get("Authorization", "").encode("latin-1")
        for tenant, bearer in bearers.items():
            if hmac.compare_digest(given, bearer):
                return tenant
        raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                        code="invalid_api_key")

    def endpoint(handler: Handler, public: bool = False) -> Handler:
        """``handler`` behind the token; every failure an answer in OpenAI's envelope."""
        async def guarded(request: Request) -> Response:
            try:
                if not public:
                    request.state.tenant = authorize(request)
                return await handler(request)
            except HttpError as exc:
                return error(exc.status, exc.message, exc.code, exc.param)
            except Refused as exc:  # an agent policy: a budget is spent
                return error(429, str(exc), "insufficient_quota")
            except BackendError as exc:
                return error(error_status(exc), str(exc))
            except ValueError as exc:
                return error(400, str(exc))
            except ClientDisconnect:
                return error(400, "the client went away")
            except Exception as exc:
                failure = unforeseen(exc, f"{request.method} {request.url.path}")
                return error(failure.status, failure.message)
        return guarded

    async def no_route(request: Request, exc: Exception) -> Response:
        try:
            authorize(request)
        except HttpError as denied:
            return error(denied.status, denied.message, denied.code)
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return error(status, f"no route {request.method} {request.url.path}"[:300])

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
        return parse_body(data)

    def tenant(request: Request) -> str:
        return str(request.state.tenant)

    async def health(request: Request) -> Response:
        return answer(200, {"status": "ok"})

    async def models(request: Request) -> Response:
        return answer(200, {"object": "list", "data": [
            model_json(name) for name in sorted(proxy.targets)]})

    async def model(request: Request) -> Response:
        name = str(request.path_params["model"])
        proxy.target(name)
        return answer(200, model_json(name))

    async def openapi(request: Request) -> Response:
        return answer(200, openapi_schema(sorted(proxy.targets), secured=bool(proxy.tokens)))

    async def workflow_report(request: Request) -> Response:
        return answer(200, proxy.workflow_report(tenant(request), _workflow_id(request)))

    async def complete(request: Request) -> Response:
        return answer(200, await proxy.complete(tenant(request), _workflow_id(request)))

    async def whole_report(request: Request) -> Response:
        return answer(200, proxy.tenants_report(tenant(request)))

    async def chat(request: Request) -> Response:
        data = await body(request)
        target = proxy.target(data.get("model"))
        check_chat(data)
        tags = read_tags(request.headers, data, tenant(request))
        bodies = choice_bodies(data, choices(data))
        headers = {"X-Orla-Workflow": tags.workflow} if tags.tagged else {}
        if not streamed(data):
            requests = [_request(one, target, tags) for one in bodies]
            results = await all_of([proxy.chat(tags, target, one) for one in requests])
            return answer(200, completion_json(data, *results), headers)
        stream = await open_streams([_choice_call(proxy, one, target, tags) for one in bodies],
                                    Chunks.of(data))
        return StreamingResponse(stream.events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})

    routes = [
        Route("/health", endpoint(health, public=True), methods=["GET"]),
        Route("/openapi.json", endpoint(openapi), methods=["GET"]),
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/v1/models/{model:path}", endpoint(model), methods=["GET"]),
        Route("/v1/chat/completions", endpoint(chat), methods=["POST"]),
        Route("/v1/orla/report", endpoint(whole_report), methods=["GET"]),
        Route(WORKFLOW + "/complete", endpoint(complete), methods=["POST"]),
        Route(WORKFLOW, endpoint(workflow_report), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: no_route})


def model_json(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "orla"}


def _choice_call(proxy: ProxyServer, body: dict[str, Any], target: Target,
                 tags: Tags) -> Callable[[Sink], Coroutine[Any, Any, ChatResult]]:
    """One choice's streamed call, given the sink its pieces go to."""
    def call(put: Sink) -> Coroutine[Any, Any, ChatResult]:
        return proxy.chat(tags, target, _request(body, target, tags, put))
    return call


async def all_of(calls: Sequence[Coroutine[Any, Any, ChatResult]]) -> list[ChatResult]:
    """The results of ``calls``, run together; the first failure cancels the others."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


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
