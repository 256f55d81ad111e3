"""``orla serve``: the OpenAI-compatible proxy, driven by the real ``openai`` client. On
a scripted backend for the HTTP surface (auth, limits, errors, tags), and on the real
llama.cpp engine for the cache. Assertions read counters, statuses and the requests the
backend got, never wording."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

import orla_sdk as orla
import orla_sdk.runtime.pool as pool_module
import orla_sdk.serving.proxy
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.engine import LocalEngine, free_port
from orla_sdk.backends.sim import SimEngine
from orla_sdk.backends.sim.http import serve_http
from orla_sdk.backends.wire import EngineResult, Extras, Piece
from orla_sdk.cli.commands import build_parser, main, serve_config
from orla_sdk.errors import BackendDown, BackendError
from orla_sdk.ir import BackendSpec, Capabilities
from orla_sdk.loop_thread import LoopThread
from orla_sdk.serving import proxy_workflows
from orla_sdk.serving.proxy import ProxyServer
from tests.test_faults import FakeEngine, Step, answer, reset, status

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

    def text(self) -> str:
        return "one two three"

    def piece(self, word: str) -> str:
        return word

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        text = self.text()
        for i, word in enumerate(text.split(" ")):
            if request.on_token is not None:
                request.on_token(self.piece(word if i == 0 else f" {word}"))
            await asyncio.sleep(0)
        return self.result(text)

    def result(self, text: str) -> ChatResult:
        return ChatResult(content=text, tool_calls=[], finish_reason="stop",
                          prompt_tokens=12, completion_tokens=len(text.split(" ")),
                          cached_tokens=5, ttft_s=0.01, duration_s=0.02)

    async def aclose(self) -> None:
        pass


class Numbered(Scripted):
    """Answers "answer K" for its K-th request."""

    def text(self) -> str:
        return f"answer {len(self.requests)}"


LOGPROB = {"content": [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}]}


class Talkative(Scripted):
    """Answers with what engines send beside the text: logprobs with each piece, a system
    fingerprint, llama.cpp's timings, a reasoning text and usage details."""

    def piece(self, word: str) -> str:
        return Piece(word, Extras(completion={"system_fingerprint": "fp-engine"},
                                  choice={"logprobs": LOGPROB}))

    def result(self, text: str) -> ChatResult:
        plain = super().result(text)
        return EngineResult(**vars(plain), extras=Extras(
            completion={"system_fingerprint": "fp-engine", "timings": {"predicted_n": 3}},
            choice={"logprobs": {"content": LOGPROB["content"] * 3}, "stop_reason": None},
            message={"reasoning_content": "thought"},
            usage={"completion_tokens_details": {"reasoning_tokens": 1}}))


class Breaking(Scripted):
    """Streams its first word, then fails as a lost connection would (retryable); answers
    in full from its second request on."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        if self.requests:
            return await super().chat(request)
        self.requests.append(request)
        if request.on_token is not None:
            request.on_token("one")
        raise BackendError("scripted", "lost the connection", retryable=True)


class Gated(Scripted):
    """Holds each call until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def chat(self, request: ChatRequest) -> ChatResult:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        return await super().chat(request)


class SlowSlots:
    """A slot control whose erase takes ``erase_s`` seconds; it counts them."""

    def __init__(self, erase_s: float = 0.5) -> None:
        self.erase_s = erase_s
        self.erased: list[int] = []

    async def erase(self, slot: int) -> int:
        self.erased.append(slot)
        await asyncio.sleep(self.erase_s)
        return 0


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


def post(proxy: ProxyServer, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(proxy.url + "/v1/chat/completions", content=content,
                      headers={"Content-Type": "application/json", **headers}, timeout=30)


def sse(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of a server-sent event stream, ``[DONE]`` left out."""
    return [json.loads(line[5:]) for line in response.text.splitlines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def texts(events: list[dict[str, Any]], index: int = 0) -> list[str]:
    return [c["delta"]["content"] for e in events for c in e.get("choices", [])
            if c["index"] == index and c["delta"].get("content")]


HI = [{"role": "user", "content": "hi"}]


@contextmanager
def fake_engine(*script: Step) -> Iterator[tuple[FakeEngine, str]]:
    """An engine on a real socket answering with ``script`` (see tests/test_faults.py)."""
    thread = LoopThread("fake-engine")
    thread.start()
    engine = FakeEngine(*script)
    try:
        yield engine, thread.call(engine.start())
    finally:
        thread.call(engine.stop())
        thread.stop()


@contextmanager
def engine_proxy(url: str) -> Iterator[ProxyServer]:
    with ProxyServer([orla.backends.openai_compatible("engine", url)],
                     {"light": "engine/m"}) as server:
        server.pool.engine_down_s = 0.0
        yield server


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "RETRY_BACKOFF_S", 0.01)


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


def test_the_engine_streams_exactly_when_the_client_streams(proxy: ProxyServer,
                                                           backend: Scripted) -> None:
    ask(proxy)
    list(ask(proxy, stream=True))
    ask(proxy, stream=False, n=2)
    assert [r.stream for r in backend.requests] == [False, True, False, False]
    assert [r.on_token is None for r in backend.requests] == [True, False, True, True]


class Endless(Scripted):
    """Streams its first word, then waits for ever; it notes when it is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = threading.Event()

    async def chat(self, request: ChatRequest) -> ChatResult:
        assert request.on_token is not None
        request.on_token("one")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return self.result("one")


def test_a_client_that_leaves_a_stream_cancels_its_call() -> None:
    backend = Endless()
    with scripted_proxy(backend) as server:
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=10,
                          json={"model": "light", "messages": HI, "stream": True}) as answer:
            assert next(answer.iter_lines()).startswith("data:")
        assert backend.cancelled.wait(10)


def test_answers_on_a_kept_alive_connection_are_not_held_back(proxy: ProxyServer) -> None:
    """With Nagle's algorithm on, an answer written in two parts waits for the client's
    delayed acknowledgement: about 40 ms each."""
    with httpx.Client() as kept:
        took = []
        for stream in [False, True] * 6:
            started = time.perf_counter()
            answer = kept.post(proxy.url + "/v1/chat/completions",
                               json={"model": "light", "messages": HI, "stream": stream})
            assert answer.status_code == 200
            took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.03  # under the 40 ms a delayed acknowledgement costs


def test_tools_pass_through(proxy: ProxyServer, backend: Scripted) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"id": {"type": "string"}}}}}]
    ask(proxy, tools=tools, tool_choice="auto")
    assert backend.requests[0].tools == tools
    assert backend.requests[0].params["tool_choice"] == "auto"


# ---- tags and workflows ------------------------------------------------------------------
def test_an_idle_workflow_is_completed_by_the_proxy(backend: Scripted) -> None:
    # margins wide enough for a loaded machine, where each request may take 0.1 s or more
    with scripted_proxy(backend, workflow_idle_s=1.0) as server:
        ask(server, extra_headers={"X-Orla-Workflow": "wf-idle"})
        ask(server, extra_headers={"X-Orla-Workflow": "wf-busy"})
        assert server.workflows.ids() == {"wf-idle", "wf-busy"}
        time.sleep(0.4)
        ask(server, extra_headers={"X-Orla-Workflow": "wf-busy"})  # nothing idle long enough
        assert server.workflows.ids() == {"wf-idle", "wf-busy"}
        time.sleep(0.8)
        ask(server, extra_headers={"X-Orla-Workflow": "wf-busy"})  # wf-idle: 1.2 s idle
        assert server.workflows.ids() == {"wf-busy"}
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
    assert "x-orla-workflow" not in raw.headers  # in no workflow
    assert raw.parse().choices[0].message.content
    assert proxy.workflows.ids() == set()
    assert proxy.report.rows() == []
    assert httpx.get(proxy.url + "/v1/orla/report").json()["total"]["calls"] == 0


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


def test_a_down_backend_is_5xx_and_the_proxy_keeps_serving(
        proxy: ProxyServer, caplog: pytest.LogCaptureFixture) -> None:
    proxy.pool.engine_down_s = 0.0  # fail at once rather than wait for it to come up
    engine = proxy.pool.connections["down"].spec.url.removesuffix("/v1")
    for headers in ({"X-Orla-Workflow": "wf-down"}, {}):
        with pytest.raises(openai.APIStatusError) as failed:
            ask(proxy, "broken", extra_headers=headers)
        assert failed.value.status_code == 503
        error = failed.value.response.json()["error"]
        assert error["type"] == "server_error" and "'down': unavailable" in error["message"]
        assert engine not in error["message"]  # the engine's address is not the tenant's
    errors = httpx.get(proxy.url + "/v1/orla/workflows/wf-down").json()["errors"]
    assert [e["stage"] for e in errors] == ["default"]
    assert engine not in json.dumps(errors)
    assert engine in caplog.text  # the operator's log has it
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
    with pytest.raises(openai.BadRequestError, match="not an integer"):
        ask(proxy, extra_headers={"X-Orla-Priority": "+-5"})
    with pytest.raises(openai.BadRequestError, match="outside"):  # the header wins, but
        ask(proxy, extra_headers={"X-Orla-Priority": "88"}, extra_body={"priority": -4})


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


def test_orla_serve_runs_as_a_process_and_stops_on_sigterm() -> None:
    url, stop_engine = serve_http(SimEngine("instant"))
    command = [sys.executable, "-m", "orla_sdk.cli", "serve", "--port", "0",
               "--backend", f"sim=vllm:{url}", "--map", "light=sim/instant"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        proxy_url = line.split(" at ", 1)[1].split()[0]
        reply = openai.OpenAI(base_url=proxy_url, api_key="unused").chat.completions.create(
            model="light", messages=HI, max_tokens=4)
        assert reply.usage is not None and reply.usage.completion_tokens == 4
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.stderr and server.stderr.read()
    finally:
        server.kill()
        stop_engine()


def test_the_proxy_module_is_reachable_as_orla_proxy() -> None:
    assert orla.serving.proxy.ProxyServer is ProxyServer
    assert orla_sdk.serving.proxy.is_loopback("::1")
    assert not orla_sdk.serving.proxy.is_loopback("0.0.0.0")


# ---- streams that break, engines that drop the connection --------------------------------
def test_a_stream_broken_after_text_ends_with_an_error_event_not_a_second_attempt(
        quick_retries: None) -> None:
    with fake_engine(reset("Hel"), answer("Hel", "lo")) as (engine, url), \
            engine_proxy(url) as server:
        events = sse(post(server, {"model": "light", "messages": HI, "stream": True}))
        assert texts(events) == ["Hel"]
        assert events[-1]["error"]["type"] == "server_error"
        assert engine.requests == 1
    with scripted_proxy(Breaking()) as server:
        events = sse(post(server, {"model": "light", "messages": HI, "stream": True}))
        assert texts(events) == ["one"] and "error" in events[-1]


class Crashing(Scripted):
    """Streams its first word, then fails with an error that is no backend's."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        if request.on_token is not None:
            request.on_token("one")
        await asyncio.sleep(0)
        raise RuntimeError("a bug, say")


def test_any_failure_after_text_ends_the_stream_with_an_error_event() -> None:
    with scripted_proxy(Crashing()) as server:
        answer = post(server, {"model": "light", "messages": HI, "stream": True})
        events = sse(answer)
        assert answer.status_code == 200 and texts(events) == ["one"]
        assert events[-1]["error"]["type"] == "server_error"
        plain = post(server, {"model": "light", "messages": HI})  # before any text: a status
        assert plain.status_code == 500 and plain.json()["error"]["type"] == "server_error"
    # the bug's own text is the operator's, in the log, not the client's
    assert "a bug, say" not in answer.text + plain.text
    assert "RuntimeError" in events[-1]["error"]["message"]


@orla.stage(model="light")
async def streamed(text: str) -> list[str]:
    return [piece async for piece in orla.astream(text)]


@orla.workflow
def streaming(text: str) -> list[str]:
    return streamed(text)


def test_a_stage_streaming_its_reply_gets_no_second_attempt_after_text() -> None:
    backend = Breaking()
    plan = orla.compile(streaming, backends=[backend.spec], mapping={"light": "scripted/m"})
    pieces: list[str] = []

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"scripted": backend}) as pool:
            return await orla.arun(plan, pool=pool, text="hi", on_event=lambda e: pieces.append(
                e.data["text"]) if e.kind == "token" else None)

    result = asyncio.run(go())
    assert not result.ok and pieces == ["one"] and len(backend.requests) == 1


def test_a_request_that_drops_the_connection_is_sent_a_bounded_number_of_times(
        quick_retries: None) -> None:
    with fake_engine(reset()) as (engine, url), engine_proxy(url) as server:
        llm = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")  # its own retries
        with pytest.raises(openai.APIStatusError) as failed:
            llm.chat.completions.create(model="light", messages=HI)  # type: ignore[arg-type]
        assert failed.value.status_code >= 500
        assert engine.requests <= 3
    with fake_engine(status(400)) as (engine, url), engine_proxy(url) as server:
        assert post(server, {"model": "light", "messages": HI}).status_code == 400
        assert engine.requests == 1  # refused by the engine: never sent again


# ---- n, logprobs and the engine's own fields ------------------------------------------------
def test_n_choices_are_distinct_calls_with_their_index() -> None:
    backend = Numbered()
    with scripted_proxy(backend) as server:
        reply = ask(server, n=3, seed=7)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert len({c.message.content for c in reply.choices}) == 3
        assert [r.params["seed"] for r in backend.requests] == [7, 8, 9]
        assert all("n" not in r.params.get("extra_body", {}) for r in backend.requests)
        assert reply.usage is not None and reply.usage.prompt_tokens == 36


def test_n_choices_stream_with_their_index() -> None:
    with scripted_proxy(Numbered()) as server:
        events = sse(post(server, {"model": "light", "messages": HI, "stream": True, "n": 2,
                                   "stream_options": {"include_usage": True}}))
        answers = {"".join(texts(events, i)) for i in (0, 1)}
        assert answers == {"answer 1", "answer 2"}
        finished = [c["index"] for e in events for c in e.get("choices", [])
                    if c.get("finish_reason")]
        assert sorted(finished) == [0, 1]
        assert events[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("n", [0, 17, "2", True, 1.5])
def test_a_bad_n_is_400(proxy: ProxyServer, backend: Scripted, n: Any) -> None:
    answer = post(proxy, {"model": "light", "messages": HI, "n": n})
    assert answer.status_code == 400 and "'n'" in answer.json()["error"]["message"]
    assert backend.requests == []


def test_the_engines_own_fields_pass_through() -> None:
    with scripted_proxy(Talkative()) as server:
        reply = client(server).chat.completions.create(model="light", messages=HI)
        choice = reply.choices[0]
        assert choice.logprobs is not None and len(choice.logprobs.content or []) == 3
        assert reply.system_fingerprint == "fp-engine"
        assert (reply.model_extra or {})["timings"] == {"predicted_n": 3}
        assert (choice.message.model_extra or {})["reasoning_content"] == "thought"
        assert reply.usage is not None and reply.usage.completion_tokens_details is not None
        assert reply.usage.completion_tokens_details.reasoning_tokens == 1
        events = sse(post(server, {"model": "light", "messages": HI, "stream": True}))
        pieces = [e for e in events if texts([e])]
        assert len(pieces) == 3 and all(e["choices"][0]["logprobs"] == LOGPROB for e in pieces)
        assert all(e["system_fingerprint"] == "fp-engine" for e in events)
        assert any(e.get("timings") == {"predicted_n": 3} for e in events)


def test_a_model_is_read_by_its_id(proxy: ProxyServer) -> None:
    model = client(proxy).models.retrieve("heavy")
    assert (model.id, model.object) == ("heavy", "model")
    missing = httpx.get(proxy.url + "/v1/models/gpt-17")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


# ---- bad input, bounded state ------------------------------------------------------------------
@pytest.mark.parametrize("field", [
    {"workflow_id": "x\r\nInjected: yes"}, {"workflow_id": "x\nInjected: yes"},
    {"workflow_id": "nul\x00"}, {"workflow_id": "snow\u2603"}, {"workflow_id": {"a": 1}},
    {"agent_id": "a\r\nb"}, {"agent_id": "tab\there"}])
def test_control_characters_in_ids_are_400_and_reach_no_header(
        proxy: ProxyServer, backend: Scripted, field: dict[str, Any]) -> None:
    answer = post(proxy, {"model": "light", "messages": HI, **field})
    assert answer.status_code == 400
    assert "injected" not in answer.headers and "x-orla-workflow" not in answer.headers
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert backend.requests == []


def test_a_header_outside_printable_ascii_is_400(proxy: ProxyServer) -> None:
    with socket.create_connection((proxy.host, int(proxy.url.rsplit(":", 1)[1]))) as raw:
        body = json.dumps({"model": "light", "messages": HI}).encode()
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nX-Orla-Workflow: caf\xe9\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = raw.recv(65536)
    assert head.startswith(b"HTTP/1.1 400") and b"caf" not in head.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize(("headers", "body"), [
    ({"X-Orla-Workflow": "w" * 257}, {}), ({"X-Orla-Stage": "s" * 300}, {}),
    ({"X-Orla-Agent": "a" * 300}, {}), ({}, {"workflow_id": "w" * 300}),
    ({}, {"agent_id": "a" * 300})])
def test_names_over_the_limit_are_400_naming_it(
        proxy: ProxyServer, headers: dict[str, str], body: dict[str, Any]) -> None:
    answer = post(proxy, {"model": "light", "messages": HI, **body}, **headers)
    assert answer.status_code == 400 and "256" in answer.json()["error"]["message"]
    assert post(proxy, {"model": "light", "messages": HI},
                **{"X-Orla-Workflow": "w" * 256}).status_code == 200


def test_open_workflows_are_bounded(backend: Scripted) -> None:
    with scripted_proxy(backend, max_workflows=2) as server:
        def tagged(workflow: str) -> httpx.Response:
            return post(server, {"model": "light", "messages": HI}, **{
                "X-Orla-Workflow": workflow})

        assert [tagged(w).status_code for w in ("wf-1", "wf-2", "wf-1")] == [200] * 3
        full = tagged("wf-3")
        assert full.status_code == 429 and "2" in full.json()["error"]["message"]
        assert full.headers["x-should-retry"] == "false"
        assert httpx.post(server.url + "/v1/orla/workflows/wf-1/complete").status_code == 200
        assert tagged("wf-3").status_code == 200
        assert post(server, {"model": "light", "messages": HI}).status_code == 200  # untagged


def test_the_units_of_a_workflow_are_bounded(backend: Scripted,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_workflows, "MAX_UNITS", 2)
    with scripted_proxy(backend) as server:
        def as_agent(agent: str) -> httpx.Response:
            return post(server, {"model": "light", "messages": HI}, **{
                "X-Orla-Workflow": "wf", "X-Orla-Agent": agent})

        assert [as_agent(a).status_code for a in ("a", "b", "a")] == [200] * 3
        full = as_agent("c")
        assert full.status_code == 429 and "too_many_units" in full.text
        assert len(server.report.rows(workflow="wf")) == 2


@pytest.mark.parametrize("body", [
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "priority": NaN}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "priority": 1e400}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "priority": '
    + b"9" * 40 + b"}",
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "priority": 5.5}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "priority": true}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "temperature": '
    b"Infinity}",
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "stream": true, '
    b'"stream_options": "yes"}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], '
    b'"response_format": "json"}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], '
    b'"response_format": {"type": "json_schema", "json_schema": "x"}}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], '
    b'"response_format": {"type": 5}}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi"}], "tools": "x"}',
    b'{"model": "light", "messages": [1]}', b'{"model": "light", "messages": []}',
    b'{"model": "light", "messages": [{"content": "hi"}]}',
    b'{"model": "light", "messages": [{"role": "user", "content": "hi", "x": '
    + b"[" * 900 + b"]" * 900 + b"}]}"])
def test_malformed_fields_are_400(backend: Scripted, body: bytes) -> None:
    with scripted_proxy(backend, max_body=1 << 20) as server:
        answer = post(server, body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert backend.requests == []


# ---- tenants -----------------------------------------------------------------------------------
def test_a_tenant_reads_and_completes_only_its_own_workflows(backend: Scripted) -> None:
    tokens = {"alice": "a-key", "bob": "b-key", "ops": "o-key"}
    with scripted_proxy(backend, tokens=tokens, admins=["ops"]) as server:
        def call(key: str, workflow: str) -> None:
            client(server, key).chat.completions.create(
                model="light", messages=HI,  # type: ignore[arg-type]
                extra_headers={"X-Orla-Workflow": workflow})

        def get(key: str, path: str) -> httpx.Response:
            return httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"})

        call("a-key", "wf-a")
        assert get("b-key", "/v1/orla/workflows/wf-a").status_code == 404
        assert httpx.post(server.url + "/v1/orla/workflows/wf-a/complete",
                          headers={"Authorization": "Bearer b-key"}).status_code == 404
        call("b-key", "wf-a")  # bob's own workflow of that name, not alice's
        for key in ("a-key", "b-key"):
            mine = get(key, "/v1/orla/workflows/wf-a").json()
            assert mine["total"]["calls"] == 1
            assert get(key, "/v1/orla/report").json()["total"]["calls"] == 1
        everything = get("o-key", "/v1/orla/report").json()
        assert everything["total"]["calls"] == 2
        assert {t: v["calls"] for t, v in everything["by_tenant"].items()} == {
            "alice": 1, "bob": 1}
        runs = everything["by_run"]  # one row each, though the two share the id wf-a
        assert len(runs) == 2 and all(v["calls"] == 1 for v in runs.values())


# ---- settling: off the answer's path ----------------------------------------------------------
def slotted_proxy(backend: Scripted, control: SlowSlots, **options: Any) -> ProxyServer:
    server = scripted_proxy(backend, **options)
    server.start()
    server.pool.memory.add_slots("scripted", control, 2)
    return server


def test_untagged_calls_keep_their_slot_and_wait_for_no_erase(backend: Scripted) -> None:
    control = SlowSlots(erase_s=3)  # far longer than an answer takes, even on a busy machine
    server = slotted_proxy(backend, control)
    try:
        for stream in (False, True, False):
            started = time.perf_counter()
            answer = post(server, {"model": "light", "messages": HI, "stream": stream})
            assert answer.status_code == 200 and "error" not in answer.text
            assert time.perf_counter() - started < 1.5
        assert control.erased == []
        assert len({r.slot for r in backend.requests}) == 1  # one slot: its prefix stays
        assert backend.requests[0].slot is not None
    finally:
        server.stop()


def test_idle_workflows_are_completed_off_the_answer_path(backend: Scripted) -> None:
    control = SlowSlots(erase_s=3)
    server = slotted_proxy(backend, control, workflow_idle_s=0.2)
    try:
        post(server, {"model": "light", "messages": HI}, **{"X-Orla-Workflow": "wf-old"})
        time.sleep(0.3)
        started = time.perf_counter()
        post(server, {"model": "light", "messages": HI}, **{"X-Orla-Workflow": "wf-new"})
        assert time.perf_counter() - started < 1.5
        deadline = time.monotonic() + 3
        while "wf-old" in server.workflows.ids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "wf-old" not in server.workflows.ids() and control.erased
    finally:
        server.stop()


class FailingSlots(SlowSlots):
    """A slot control whose erase fails as an engine that is down does."""

    async def erase(self, slot: int) -> int:
        raise BackendDown("scripted", "cannot reach http://10.0.0.7:8080/slots (refused)")


def test_a_failed_cache_action_reaches_the_tenant_without_its_cause(
        backend: Scripted, caplog: pytest.LogCaptureFixture) -> None:
    server = slotted_proxy(backend, FailingSlots())
    try:
        post(server, {"model": "light", "messages": HI}, **{"X-Orla-Workflow": "wf-x"})
        done = httpx.post(server.url + "/v1/orla/workflows/wf-x/complete").json()
    finally:
        server.stop()
    actions = [entry["action"] for entry in done["cache_log"]]
    assert any(a.endswith("failed; the cause is in the proxy's log") for a in actions)
    assert "10.0.0.7" not in json.dumps(done) and "10.0.0.7" in caplog.text


def test_completing_a_workflow_with_a_call_in_flight_is_409() -> None:
    backend = Gated()
    with scripted_proxy(backend) as server:
        answers: list[int] = []
        caller = threading.Thread(target=lambda: answers.append(post(
            server, {"model": "light", "messages": HI}, **{"X-Orla-Workflow": "wf-busy"}
        ).status_code))
        caller.start()
        deadline = time.monotonic() + 5
        while not server.workflows.ids() and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = httpx.post(server.url + "/v1/orla/workflows/wf-busy/complete")
        assert busy.status_code == 409 and "in flight" in busy.json()["error"]["message"]
        backend.gate.set()
        caller.join(timeout=5)
        assert answers == [200]
        done = httpx.post(server.url + "/v1/orla/workflows/wf-busy/complete").json()
        assert done["report"]["total"]["calls"] == 1


# ---- the serve command's backends ----------------------------------------------------------------
def test_the_serve_command_declares_engines_with_their_concurrency() -> None:
    def parsed(*argv: str) -> Any:
        return serve_config(build_parser().parse_args(["serve", *argv]))

    specs, _ = parsed("--backend", "gpu=vllm:http://10.0.0.5:8000/v1",
                      "--backend", "sg=sglang:http://10.0.0.6:30000",
                      "--backend", "cpu=llamacpp:http://127.0.0.1:8080",
                      "--backend", "api=http://10.0.0.7/v1", "--map", "light=gpu/qwen")
    assert [(s.name, s.kind, s.url) for s in specs] == [
        ("gpu", "vllm", "http://10.0.0.5:8000/v1"), ("sg", "sglang", "http://10.0.0.6:30000"),
        ("cpu", "llamacpp", "http://127.0.0.1:8080"), ("api", "openai", "http://10.0.0.7/v1")]
    assert specs[0].scheduling.limit == 256  # vLLM's default --max-num-seqs
    specs, _ = parsed("--heavy", "http://10.0.0.5:8000/v1", "--kind", "vllm",
                      "--concurrency", "512")
    assert [(s.kind, s.scheduling.limit) for s in specs] == [("vllm", 512)]
    with pytest.raises(SystemExit):
        parsed("--heavy", "http://x", "--concurrency", "0")
    gpu = orla.backends.vllm("gpu", f"http://127.0.0.1:{free_port()}/v1")
    api = orla.backends.openai_compatible("api", "http://127.0.0.1:9/v1", concurrency=64)
    with ProxyServer([gpu, api], {"light": "gpu/m", "heavy": "api/m"}) as server:
        assert server.pool["gpu"].queue.limit == 256
        assert server.pool["api"].queue.limit == 64


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
    # the engine streamed only the streamed call, as it would bare: its first token alone
    # was timed
    assert {name: s["ttft_s_median"] is not None for name, s in report["by_stage"].items()
            } == {"draft": False, "review": False, "closer": True}
    assert report["by_stage"]["closer"]["ttft_s_median"] > 0

    done = httpx.post(llama_proxy.url + "/v1/orla/workflows/wf-cache/complete").json()
    # one context, the closer's last: saved as its template and left in the slot
    (ended,) = done["cache_log"]
    assert re.fullmatch(r"save slot 0 as closer's template \(\d+ tokens\) and leave it there",
                        ended["action"])
    assert json.dumps(done["report"]) == json.dumps(report)

    # the closer of the next workflow takes that slot: llama.cpp finds the prefix there
    again = llm.chat.completions.create(
        model="heavy", max_tokens=4, temperature=0,
        messages=[{"role": "system", "content": PREFIX},
                  {"role": "user", "content": "Name another weekday."}],
        extra_body={"workflow_id": "wf-cache-2", "agent_id": "closer"})
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert (again.usage.prompt_tokens_details.cached_tokens or 0) > usage[0].prompt_tokens // 2
    done = httpx.post(llama_proxy.url + "/v1/orla/workflows/wf-cache-2/complete").json()
    started = next(e for e in done["cache_log"] if e["decision"] == "restore")
    assert started["action"].startswith("none: slot 0 holds closer's template already")


def test_tenant_tokens_are_name_and_secret_and_keep_base64_padding() -> None:
    from orla_sdk.cli.commands import tenant_tokens

    assert tenant_tokens(["alice=c2VjcmV0IQ==", "bob-2=x"]) == {
        "alice": "c2VjcmV0IQ==", "bob-2": "x"}
    for bad in (["=x"], ["alice="], ["no-equals"], ["a b=x"]):
        with pytest.raises(orla.OrlaError, match="is not NAME=SECRET"):
            tenant_tokens(bad)
    with pytest.raises(orla.OrlaError, match="twice"):
        tenant_tokens(["alice=1", "alice=2"])


def test_logprobs_timings_and_the_fingerprint_come_through_from_llama_cpp(
        llama_proxy: ProxyServer) -> None:
    llm = client(llama_proxy)
    reply = llm.chat.completions.create(model="light", messages=HI, max_tokens=4,
                                        logprobs=True, top_logprobs=2, temperature=0)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert all(len(t.top_logprobs) == 2 for t in logprobs.content)
    assert reply.system_fingerprint
    assert (reply.model_extra or {})["timings"]["predicted_n"] == len(logprobs.content)
    chunks = list(llm.chat.completions.create(model="light", messages=HI, max_tokens=4,
                                              logprobs=True, stream=True, temperature=0))
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces and all(c.choices[0].logprobs is not None for c in pieces)
    assert any("timings" in (c.model_extra or {}) for c in chunks)
