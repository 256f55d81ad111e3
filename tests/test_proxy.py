"""``orla serve``: the OpenAI-compatible proxy, driven by the real ``openai`` client. On
a scripted backend for the HTTP surface (auth, limits, errors, tags), and on the real
llama.cpp engine for the cache. Assertions read counters, statuses and the requests the
backend got, never wording."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

import orla_sdk as orla
import orla_sdk.serving.proxy
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.engine import LocalEngine, free_port
from orla_sdk.cli.commands import build_parser, main, serve_config
from orla_sdk.errors import BackendError
from orla_sdk.ir import BackendSpec, Capabilities
from orla_sdk.serving.proxy import ProxyServer

MODEL = orla.backends.DEFAULT_LOCAL_MODEL
PREFIX = " ".join(f"Fact {i}: the warehouse ships parcels on weekday {i % 5}." for i in range(30))
HINTS = {"workflow_id", "agent_id", "step_id", "parent_step_id"}


class Scripted:
    """A backend that answers "one two three" (streamed word by word when asked), or
    raises what it was given; it keeps the requests it got."""

    def __init__(self, error: Exception | None = None) -> None:
        self.spec = BackendSpec(name="scripted", kind="openai", url="http://127.0.0.1:9/v1",
                                capabilities=Capabilities(tool_calling=True))
        self.error = error
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        for i, word in enumerate(["one", "two", "three"]):
            if request.on_token is not None:
                request.on_token(word if i == 0 else f" {word}")
            await asyncio.sleep(0)
        return ChatResult(content="one two three", tool_calls=[], finish_reason="stop",
                          prompt_tokens=12, completion_tokens=3, cached_tokens=5,
                          ttft_s=0.01, duration_s=0.02)

    async def aclose(self) -> None:
        pass


def scripted_proxy(backend: Scripted, **options: Any) -> ProxyServer:
    down = orla.backends.openai_compatible("down", f"http://127.0.0.1:{free_port()}/v1")
    return ProxyServer([backend.spec, down], {"light": "scripted/tiny", "heavy": "scripted/big",
                                              "broken": "down/gone"},
                       clients={"scripted": backend}, **options)


@pytest.fixture
def backend() -> Scripted:
    return Scripted()


@pytest.fixture
def proxy(backend: Scripted) -> Iterator[ProxyServer]:
    with scripted_proxy(backend, max_body=4096) as server:
        yield server


def client(proxy: ProxyServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


def ask(proxy: ProxyServer, model: str = "light", **options: Any) -> Any:
    return client(proxy).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **options)


# ---- the OpenAI surface ----------------------------------------------------------------
def test_a_completion_models_and_health(proxy: ProxyServer, backend: Scripted) -> None:
    reply = ask(proxy, "heavy")
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens == 12
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 5
    assert backend.requests[0].model == "big"  # the mapped model, not the logical name
    assert sorted(m.id for m in client(proxy).models.list()) == ["broken", "heavy", "light"]
    assert httpx.get(proxy.url + "/health").json() == {"status": "ok"}


def test_a_stream_has_chunks_and_a_usage_chunk(proxy: ProxyServer) -> None:
    chunks = list(ask(proxy, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert text == "one two three"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_tools_pass_through(proxy: ProxyServer, backend: Scripted) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"id": {"type": "string"}}}}}]
    ask(proxy, tools=tools, tool_choice="auto")
    assert backend.requests[0].tools == tools
    assert backend.requests[0].params["tool_choice"] == "auto"


# ---- tags and workflows ------------------------------------------------------------------
def test_an_idle_workflow_is_completed_by_the_proxy(backend: Scripted) -> None:
    with scripted_proxy(backend, workflow_idle_s=0.5) as server:
        ask(server, extra_headers={"X-Orla-Workflow": "wf-idle"})
        ask(server, extra_headers={"X-Orla-Workflow": "wf-busy"})
        assert set(server.workflows) == {"wf-idle", "wf-busy"}
        time.sleep(0.3)
        ask(server, extra_headers={"X-Orla-Workflow": "wf-busy"})  # nothing idle long enough
        assert set(server.workflows) == {"wf-idle", "wf-busy"}
        time.sleep(0.3)
        ask(server, extra_headers={"X-Orla-Workflow": "wf-busy"})  # wf-idle: 0.6 s idle
        assert set(server.workflows) == {"wf-busy"}
        assert httpx.get(server.url + "/v1/orla/workflows/wf-idle").status_code == 404


def test_header_tags_queue_record_and_complete(proxy: ProxyServer, backend: Scripted) -> None:
    headers = {"X-Orla-Workflow": "wf-7", "X-Orla-Stage": "triage", "X-Orla-Agent": "bot",
               "X-Orla-Priority": "90"}
    for _ in range(2):
        ask(proxy, extra_headers=headers)
    ask(proxy, "heavy", extra_headers={**headers, "X-Orla-Stage": "answer"})
    assert [r.priority for r in backend.requests] == [90, 90, 90]
    report = httpx.get(proxy.url + "/v1/orla/workflows/wf-7").json()
    assert report["total"]["calls"] == 3 and report["total"]["prompt_tokens"] == 36
    triage = report["by_stage"]["triage"]
    assert (triage["calls"], triage["cached_tokens"]) == (2, 10)
    assert report["by_stage"]["answer"]["calls"] == 1
    assert report["by_agent"] == {"bot": report["total"]}
    assert {row.labels["stage"] for row in proxy.report.rows(workflow="wf-7")} == {
        "triage", "answer"}  # the session's Report holds the rows
    done = httpx.post(proxy.url + "/v1/orla/workflows/wf-7/complete").json()
    assert done["report"] == report and isinstance(done["cache_log"], list)
    assert httpx.get(proxy.url + "/v1/orla/workflows/wf-7").status_code == 404


def test_sglang_hints_are_honoured_and_stripped(proxy: ProxyServer, backend: Scripted) -> None:
    hints = {"workflow_id": "wf-s", "agent_id": "planner", "step_id": "s2",
             "parent_step_id": "s1"}
    ask(proxy, extra_body={**hints, "top_k": 5})
    forwarded = backend.requests[0].params.get("extra_body", {})
    assert forwarded == {"top_k": 5}  # other fields reach the engine, the hints do not
    assert not HINTS & set(backend.requests[0].params)
    report = httpx.get(proxy.url + "/v1/orla/workflows/wf-s").json()
    assert report["by_stage"]["planner"]["calls"] == 1
    assert report["by_agent"]["planner"]["calls"] == 1


def test_calls_that_name_no_agent_are_one_agent_per_system_prompt(proxy: ProxyServer) -> None:
    def ask_as(system: str, question: str) -> None:
        client(proxy).chat.completions.create(
            model="light", messages=[{"role": "system", "content": system},
                                     {"role": "user", "content": question}],
            extra_headers={"X-Orla-Workflow": "wf-fp"})

    ask_as("You write code.", "first")
    ask_as("You review code.", "second")
    ask_as("You write code.", "third")
    report = httpx.get(proxy.url + "/v1/orla/workflows/wf-fp").json()
    assert sorted(t["calls"] for t in report["by_agent"].values()) == [1, 2]
    assert all(agent.startswith("fp-") for agent in report["by_agent"])
    assert list(report["by_stage"]) == ["default"]


def test_untagged_calls_are_not_kept(proxy: ProxyServer) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="light", messages=[{"role": "user", "content": "hi"}])
    workflow = raw.headers["x-orla-workflow"]
    assert workflow
    assert httpx.get(f"{proxy.url}/v1/orla/workflows/{workflow}").status_code == 404
    assert proxy.workflows == {}
    assert proxy.report.rows() == []


# ---- auth, limits, bad input ---------------------------------------------------------------
def test_a_token_is_required_when_set(backend: Scripted) -> None:
    with scripted_proxy(backend, token="s3cret") as server:
        with pytest.raises(openai.AuthenticationError) as denied:
            ask(server)
        assert denied.value.status_code == 401
        reply = client(server, "s3cret").chat.completions.create(
            model="light", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/health").status_code == 200


def test_each_tenant_token_has_its_own_budget(backend: Scripted) -> None:
    from orla_sdk.agents.budgets import budget_from_text

    budget = budget_from_text("per=tenant,tenants=alice,tokens=35")
    with scripted_proxy(backend, tokens={"alice": "a-key", "bob": "b-key"},
                        policies=[budget]) as server:
        def hi(key: str) -> Any:
            return client(server, key).chat.completions.create(
                model="light", messages=[{"role": "user", "content": "hi"}], max_tokens=10)

        hi("a-key"), hi("a-key")  # 15 tokens served each; each asks for up to 10 more
        with pytest.raises(openai.RateLimitError) as spent:
            hi("a-key")
        assert spent.value.status_code == 429
        assert "token budget" in str(spent.value) and "at most 35 per tenant" in str(spent.value)
        assert all(hi("b-key").choices for _ in range(4))  # bob has no budget
        assert budget.used_tokens == {("alice",): 30}
        with pytest.raises(openai.AuthenticationError):
            hi("unknown")


def test_a_body_over_the_limit_is_413(proxy: ProxyServer, backend: Scripted) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        client(proxy).chat.completions.create(
            model="light", messages=[{"role": "user", "content": "x" * 5000}])
    assert refused.value.status_code == 413
    assert "error" in refused.value.response.json()
    assert backend.requests == []
    assert ask(proxy).choices  # still serving


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"model": "light"}',
                                  b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000])
def test_bad_bodies_are_400(backend: Scripted, body: bytes) -> None:
    with scripted_proxy(backend, max_body=1 << 20) as server:
        answer = httpx.post(server.url + "/v1/chat/completions", content=body,
                            headers={"Content-Type": "application/json"})
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert ask(server).choices


def test_an_unknown_model_is_404_naming_the_known(proxy: ProxyServer) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        ask(proxy, "gpt-17")
    error = missing.value.response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "'light'" in error["message"] and "'heavy'" in error["message"]


def test_a_down_backend_is_5xx_and_the_proxy_keeps_serving(proxy: ProxyServer) -> None:
    proxy.pool.engine_down_s = 0.0  # fail at once rather than wait for it to come up
    with pytest.raises(openai.APIStatusError) as failed:
        ask(proxy, "broken", extra_headers={"X-Orla-Workflow": "wf-down"})
    assert failed.value.status_code == 503
    assert failed.value.response.json()["error"]["type"] == "server_error"
    errors = httpx.get(proxy.url + "/v1/orla/workflows/wf-down").json()["errors"]
    assert [e["stage"] for e in errors] == ["default"]
    assert ask(proxy).choices


def test_the_engines_own_4xx_comes_through() -> None:
    error = BackendError("scripted", "answered 400", retryable=False, status=400)
    with scripted_proxy(Scripted(error)) as server, pytest.raises(openai.BadRequestError):
        ask(server)


def test_a_stream_that_fails_first_is_an_error_status() -> None:
    with scripted_proxy(Scripted(BackendError("scripted", "no", retryable=False))) as server:
        with pytest.raises(openai.APIStatusError) as failed:
            list(ask(server, stream=True))
        assert failed.value.status_code == 502


def test_bad_priority_is_400(proxy: ProxyServer) -> None:
    with pytest.raises(openai.BadRequestError):
        ask(proxy, extra_headers={"X-Orla-Priority": "urgent"})


def test_no_token_off_loopback_is_refused(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(orla.OrlaError):
        scripted_proxy(Scripted(), host="0.0.0.0")
    monkeypatch.delenv("ORLA_PROXY_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "token" in capsys.readouterr().err


def test_the_serve_command_builds_backends_and_mapping() -> None:
    def parsed(*argv: str) -> Any:
        return serve_config(build_parser().parse_args(["serve", *argv]))

    specs, mapping = parsed()
    assert [(s.name, s.kind, s.url) for s in specs] == [("local", "llamacpp", None)]
    assert mapping == {"light": f"local/{MODEL}", "heavy": f"local/{MODEL}"}
    specs, mapping = parsed("--backend", "edge=http://127.0.0.1:8080", "--kind", "llamacpp",
                            "--map", "light=edge/m1", "--heavy", "http://10.0.0.2:8000/v1")
    assert [(s.name, s.kind) for s in specs] == [("edge", "llamacpp"), ("heavy", "llamacpp")]
    assert mapping == {"light": "edge/m1", "heavy": f"heavy/{MODEL}"}
    with pytest.raises(orla.OrlaError):
        parsed("--backend", "edge=http://127.0.0.1:8080")  # which logical names?
    with pytest.raises(orla.OrlaError):
        parsed("--backend", "edge=ftp://x", "--map", "light=edge/m1")


def test_the_proxy_module_is_reachable_as_orla_proxy() -> None:
    assert orla.serving.proxy.ProxyServer is ProxyServer
    assert orla_sdk.serving.proxy.is_loopback("::1")
    assert not orla_sdk.serving.proxy.is_loopback("0.0.0.0")


# ---- the real llama.cpp engine -------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_proxy(llama_engine: LocalEngine) -> Iterator[ProxyServer]:
    local = orla.backends.llamacpp("local", url=llama_engine.url)
    target = f"local/{MODEL}"
    with ProxyServer([local], {"light": target, "heavy": target}) as server:
        yield server


def test_a_workflow_keeps_its_prefix_on_one_slot(llama_proxy: ProxyServer) -> None:
    llm = client(llama_proxy)
    usage = []
    for stage, question in (("draft", "Which weekday does fact 3 name?"),
                            ("review", "Which weekday does fact 7 name?")):
        reply = llm.chat.completions.create(
            model="light", max_tokens=8, temperature=0,
            messages=[{"role": "system", "content": PREFIX},
                      {"role": "user", "content": question}],
            extra_headers={"X-Orla-Workflow": "wf-cache", "X-Orla-Stage": stage})
        assert reply.usage is not None
        usage.append(reply.usage)
    details = usage[1].prompt_tokens_details
    assert details is not None and (details.cached_tokens or 0) > usage[0].prompt_tokens // 2

    chunks = list(llm.chat.completions.create(
        model="heavy", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "system", "content": PREFIX},
                  {"role": "user", "content": "Name one weekday."}],
        extra_body={"workflow_id": "wf-cache", "agent_id": "closer"}))
    assert len(chunks) >= 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    report = httpx.get(llama_proxy.url + "/v1/orla/workflows/wf-cache").json()
    assert {name: s["calls"] for name, s in report["by_stage"].items()} == {
        "draft": 1, "review": 1, "closer": 1}
    assert report["by_stage"]["review"]["cached_tokens"] > 0
    assert all(s["ttft_s_median"] > 0 for s in report["by_stage"].values())

    done = httpx.post(llama_proxy.url + "/v1/orla/workflows/wf-cache/complete").json()
    assert any(e["action"].startswith("erase slot") for e in done["cache_log"])
    assert json.dumps(done["report"]) == json.dumps(report)


def test_tenant_tokens_are_name_and_secret_and_keep_base64_padding() -> None:
    from orla_sdk.cli.commands import tenant_tokens

    assert tenant_tokens(["alice=c2VjcmV0IQ==", "bob-2=x"]) == {
        "alice": "c2VjcmV0IQ==", "bob-2": "x"}
    for bad in (["=x"], ["alice="], ["no-equals"], ["a b=x"]):
        with pytest.raises(orla.OrlaError, match="is not NAME=SECRET"):
            tenant_tokens(bad)
    with pytest.raises(orla.OrlaError, match="twice"):
        tenant_tokens(["alice=1", "alice=2"])
