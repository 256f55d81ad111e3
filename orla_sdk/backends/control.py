"""Requests to an engine's control endpoints (llama.cpp's slots and metrics, vLLM's and
SGLang's cache resets and server info), with the errors a chat call would give: an
engine that cannot be reached, or answers 502-504, is ``BackendDown``."""

from __future__ import annotations

from typing import Any

import httpx

from orla_sdk.errors import BackendDown, BackendError


async def control_request(client: httpx.AsyncClient, backend: str, engine: str, method: str,
                          url: str, **kwargs: Any) -> httpx.Response:
    """A request to an engine's control endpoint. An engine that cannot be reached, or
    answers 502-504, is ``BackendDown``, as for its chat calls; other error answers are a
    ``BackendError``."""
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise BackendDown(backend, f"cannot reach {engine} at {url} ({type(exc).__name__}: "
                          f"{exc}); is it running? `orla engine status` tells.") from exc
    status = response.status_code
    if status < 400:
        return response
    message = f"{engine} answered {method} {url} with {status}: {response.text[:300]}"
    if status in (502, 503, 504):
        raise BackendDown(backend, message, status=status)
    raise BackendError(backend, message, retryable=False, status=status)
