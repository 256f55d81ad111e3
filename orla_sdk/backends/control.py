"""Requests to an engine's control endpoints (llama.cpp's slots and metrics, vLLM's and
SGLang's cache resets and server info), with the errors a chat call would give: an
engine that cannot be reached, or answers 502-504, is ``BackendDown``."""

from __future__ import annotations

import json
from typing import Any

from orla_sdk.backends.http1 import ConnectionLost, Pool
from orla_sdk.errors import BackendDown, BackendError


async def control_request(http: Pool, backend: str, engine: str, method: str, path: str,
                          body: dict[str, Any] | None = None) -> bytes:
    """A request to an engine's control endpoint (``body`` sent as JSON); the answer's
    body. An engine that cannot be reached, or answers 502-504, is ``BackendDown``, as for
    its chat calls; other error answers are a ``BackendError``. A connection lost is tried
    once more on a fresh one (a kept-alive connection the server has just closed)."""
    content = json.dumps(body).encode() if body is not None else b""
    try:
        try:
            status, data = await _send(http, method, path, content, fresh=False)
        except ConnectionLost:
            status, data = await _send(http, method, path, content, fresh=True)
    except OSError as exc:  # unreachable, lost, or timed out
        raise BackendDown(backend, f"cannot reach {engine} at {http.url}{path} "
                          f"({type(exc).__name__}: {exc}); is it running? `orla engine "
                          "status` tells.") from exc
    if status < 400:
        return data
    message = (f"{engine} answered {method} {http.url}{path} with {status}: "
               f"{data[:300].decode(errors='replace')}")
    if status in (502, 503, 504):
        raise BackendDown(backend, message, status=status)
    raise BackendError(backend, message, retryable=False, status=status)


async def _send(http: Pool, method: str, path: str, content: bytes,
                fresh: bool) -> tuple[int, bytes]:
    async with http.request(method, path, content, fresh=fresh) as answer:
        return answer.status, await answer.read()
