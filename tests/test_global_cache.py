"""vLLM's and SGLang's engine-wide cache controls, against recorded HTTP answers: the reset
endpoint each engine has, the KV-usage gauge each reports, SGLang's server info."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import orla_sdk as orla
from orla_sdk.backends.connect import BATCHING_LIMIT
from orla_sdk.backends.engine import free_port
from orla_sdk.backends.global_cache import GlobalCacheControl
from orla_sdk.errors import BackendDown

VLLM_METRICS = """# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-8B"} 0.42
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 3.0
"""
SGLANG_METRICS = 'sglang:token_usage{model_name="qwen"} 0.93\n'


def engine(kind: str, seen: list[str]) -> GlobalCacheControl:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/metrics":
            return httpx.Response(200, text=VLLM_METRICS if kind == "vllm" else SGLANG_METRICS)
        if request.url.path == "/get_server_info":
            return httpx.Response(200, json={"max_running_requests": 48, "tp_size": 1})
        if request.url.path in ("/reset_prefix_cache", "/flush_cache"):
            return httpx.Response(200, text="ok")
        return httpx.Response(404, text="not found")

    return GlobalCacheControl("http://gpu:8000/v1", kind, transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(("kind", "reset_path", "usage", "limit"), [
    ("vllm", "/reset_prefix_cache", 0.42, None), ("sglang", "/flush_cache", 0.93, 48)])
def test_each_engine_gets_its_own_endpoints(kind: str, reset_path: str, usage: float,
                                            limit: int | None) -> None:
    seen: list[str] = []
    control = engine(kind, seen)

    async def scenario() -> tuple[float | None, int | None]:
        await control.reset()
        found = await control.usage(), await control.max_running_requests()
        await control.aclose()
        return found

    assert asyncio.run(scenario()) == (usage, limit)
    assert seen[0] == f"POST {reset_path}"


def test_an_error_answer_names_the_engine_and_path() -> None:
    control = GlobalCacheControl("http://gpu:8000", "vllm", transport=httpx.MockTransport(
        lambda request: httpx.Response(503, text="engine is sleeping")))
    with pytest.raises(BackendDown, match=r"vllm answered POST \S+/reset_prefix_cache with 503"):
        asyncio.run(control.reset())


def test_a_pool_starts_when_a_shared_cache_engine_is_not_up_yet() -> None:
    spec = orla.backends.sglang("gpu", f"http://127.0.0.1:{free_port()}/v1", models=["qwen"])

    async def start() -> int:
        async with orla.BackendPool([spec]) as pool:
            return pool["gpu"].queue.limit

    assert asyncio.run(start()) == BATCHING_LIMIT  # a batching engine's, until it can say
