"""The OpenAPI 3.1 description of the proxy's endpoints, served at ``/openapi.json``.

It states what the proxy itself checks, and no more: a request it describes as valid is
served, one it describes as invalid is refused with a 4xx (the engine behind may refuse
more, such as a temperature out of its range).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orla_sdk.serving.proxy_input import (
    HEADER_NAME_PATTERN,
    MAX_CHOICES,
    MAX_NAME_CHARS,
    MAX_PRIORITY,
    NAME_PATTERN,
)

ERROR = {"$ref": "#/components/schemas/Error"}
REPORT = {"$ref": "#/components/schemas/WorkflowReport"}
NAME = {"type": "string", "maxLength": MAX_NAME_CHARS, "pattern": NAME_PATTERN}
WORKFLOW_ID = {"type": "string", "maxLength": MAX_NAME_CHARS, "pattern": HEADER_NAME_PATTERN}


def openapi_schema(models: Sequence[str], *, secured: bool) -> dict[str, Any]:
    """The description of a proxy serving the logical ``models``; ``secured`` when it
    takes bearer tokens."""
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "orla serve", "version": "2",
                 "description": "An OpenAI-compatible proxy in front of orla's backends."},
        "paths": paths(),
        "components": {"schemas": schemas(models)},
    }
    if secured:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                              "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema


def answers(description: str, schema: dict[str, Any] | None = None,
            **errors: str) -> dict[str, Any]:
    """A 200 of ``schema`` and the error answers, each in OpenAI's envelope."""
    content = {"application/json": {"schema": schema or {"type": "object"}}}
    failed = {"application/json": {"schema": ERROR}}
    return {"200": {"description": description, "content": content},
            **{status.removeprefix("e"): {"description": text, "content": failed}
               for status, text in errors.items()},
            "default": {"description": "an error, in OpenAI's error envelope",
                        "content": failed}}


def paths() -> dict[str, Any]:
    workflow = [{"name": "workflow", "in": "path", "required": True,
                 "schema": {"type": "string"}}]
    return {
        "/v1/chat/completions": {"post": chat_operation()},
        "/v1/models": {"get": {"summary": "the logical model names", "responses": answers(
            "a list of models", {"$ref": "#/components/schemas/ModelList"})}},
        "/v1/models/{model}": {"get": {
            "summary": "one logical model",
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": answers("the model", {"$ref": "#/components/schemas/Model"},
                                 e404="not a model served here")}},
        "/v1/orla/report": {"get": {
            "summary": "the report of the caller's workflows (every tenant's for an admin)",
            "responses": answers("the serving report")}},
        "/v1/orla/workflows/{workflow}": {"get": {
            "summary": "one of the caller's workflows: its report", "parameters": workflow,
            "responses": answers("its report", REPORT, e404="no such workflow of the caller")}},
        "/v1/orla/workflows/{workflow}/complete": {"post": {
            "summary": "end a workflow: drop its cache and forget it",
            "parameters": workflow,
            "responses": answers("the cache log and the final report", {
                "type": "object", "properties": {
                    "workflow": {"type": "string"},
                    "cache_log": {"type": "array", "items": {"type": "object"}},
                    "report": REPORT}},
                e404="no such workflow of the caller",
                e409="the workflow has calls in flight")}},
        "/health": {"get": {"summary": "liveness, without auth", "security": [],
                            "responses": answers("ok")}},
        "/openapi.json": {"get": {"summary": "this description",
                                  "responses": answers("the OpenAPI description")}},
    }


def chat_operation() -> dict[str, Any]:
    tags = [{"name": name, "in": "header", "required": False, "description": text,
             "schema": schema}
            for name, text, schema in (
                ("X-Orla-Workflow", "the workflow (else the body's workflow_id)", WORKFLOW_ID),
                ("X-Orla-Stage", "the stage (default: the agent, else 'default')", NAME),
                ("X-Orla-Agent", "the agent (else the body's agent_id)", NAME),
                ("X-Orla-Priority", "0..100, higher first (default 50)",
                 {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY}))]
    return {
        "summary": "OpenAI chat completions, through orla's queues and cache slots",
        "parameters": tags,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ChatRequest"}}}},
        "responses": {
            **answers("", e400="a malformed request", e404="not a model served here",
                      e413="a body over the limit",
                      e429="a spent budget, or too many open workflows"),
            "200": {"description": "a chat.completion, or server-sent chat.completion.chunk "
                    "events with stream=true",
                    "headers": {"X-Orla-Workflow": {"description": "the call's workflow",
                                                    "schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {
                                    "type": "object", "required": ["data"],
                                    "properties": {"data": {"type": "string"}}}}}}}}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def schemas(models: Sequence[str]) -> dict[str, Any]:
    return {
        "ChatRequest": chat_request_schema(models),
        "Model": {"type": "object", "required": ["id", "object"], "properties": {
            "id": {"type": "string"}, "object": {"const": "model"},
            "created": {"type": "integer"}, "owned_by": {"type": "string"}}},
        "ModelList": {"type": "object", "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}},
        "Totals": {"type": "object", "properties": {
            key: {"type": ["number", "null"]} for key in (
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
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "object", "required": ["message", "type"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]}}}}},
    }


def chat_request_schema(models: Sequence[str]) -> dict[str, Any]:
    """The fields the proxy reads; any other goes on to the engine as it is."""
    response_format = {"oneOf": [
        {"type": "object", "required": ["type"],
         "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "json_schema"], "properties": {
            "type": {"const": "json_schema"},
            "json_schema": {"type": "object", "properties": {
                "name": {"type": "string"}, "schema": nullable({"type": "object"})}}}}]}
    return {
        "type": "object", "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "enum": list(models)},
            "messages": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role"],
                "properties": {"role": {"type": "string"}}}},
            "stream": nullable({"type": "boolean"}),
            "stream_options": nullable({"type": "object", "properties": {
                "include_usage": {"type": "boolean"}}}),
            "n": nullable({"type": "integer", "minimum": 1, "maximum": MAX_CHOICES}),
            "response_format": nullable(response_format),
            "tools": nullable({"type": "array", "items": {"type": "object"}}),
            "max_tokens": nullable({"type": "integer", "minimum": 0}),
            "max_completion_tokens": nullable({"type": "integer", "minimum": 0}),
            "seed": nullable({"type": "integer"}),
            "temperature": nullable({"type": "number"}),
            "top_p": nullable({"type": "number"}),
            "tool_choice": nullable({"type": ["string", "object"]}),
            "priority": nullable({"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY}),
            "workflow_id": nullable(WORKFLOW_ID),
            "agent_id": nullable(NAME),
        },
    }
