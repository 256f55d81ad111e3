"""Engine-wide prefix-cache controls of vLLM and SGLang: a global reset and KV usage.

These engines share one prefix cache between all requests, so the only flush they offer
drops every workflow's cached prefixes at once. The memory manager calls ``reset`` only
when no other workflow would lose work, and reads ``usage`` to detect memory pressure.
SGLang's ``/get_server_info`` also says how many requests it runs at once, which sizes
orla's queue in front of it.
"""

from __future__ import annotations

import json

import httpx

from orla_sdk.backends.control import control_request
from orla_sdk.backends.http1 import connection_pool
from orla_sdk.backends.llamacpp_slots import parse_prometheus

RESET_PATHS = {"vllm": "/reset_prefix_cache", "sglang": "/flush_cache"}
# the gauge (0..1) of KV blocks in use, by engine; vLLM renamed its gauge in v0.10
USAGE_METRICS = {"vllm": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                 "sglang": ("sglang:token_usage",)}


class GlobalCacheControl:
    def __init__(self, url: str, kind: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 backend: str | None = None) -> None:
        if kind not in RESET_PATHS:
            raise ValueError(f"no global cache reset is known for engine kind {kind!r}")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.backend = backend or self.url
        self.kind = kind
        self._http = connection_pool(self.url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def reset(self) -> int | None:
        """Drop the engine's cached prefixes; engines do not say how many tokens."""
        await self._request("POST", RESET_PATHS[self.kind])
        return None

    async def usage(self) -> float | None:
        """The share of KV memory in use, from ``/metrics``; None if not reported."""
        values = parse_prometheus((await self._request("GET", "/metrics")).decode())
        for name in USAGE_METRICS[self.kind]:
            if name in values:
                return values[name]
        return None

    async def max_running_requests(self) -> int | None:
        """How many requests SGLang runs at once (``/get_server_info``); None elsewhere or
        when the server does not say."""
        if self.kind != "sglang":
            return None
        info = json.loads(await self._request("GET", "/get_server_info"))
        value = info.get("max_running_requests") if isinstance(info, dict) else None
        return int(value) if isinstance(value, int) and value > 0 else None

    async def _request(self, method: str, path: str) -> bytes:
        return await control_request(self._http, self.backend, self.kind, method, path)
