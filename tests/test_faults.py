"""Backend faults absorbed by the pool: malformed and cut streams, lost connections, engines
that trickle forever or are down for a while. The engine is a fake on a real socket that
answers each chat request with the next step of a script."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import orla_sdk as orla
import orla_sdk.runtime.pool as pool_module
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.engine import free_port
from orla_sdk.backends.openai_client import OpenAICompatibleBackend
from orla_sdk.errors import BackendDown, BackendError
from orla_sdk.ir import BackendSpec
from orla_sdk.runtime.pool import BACKEND_RETRIES, BackendPool, Served

T = TypeVar("T")
Step = Callable[[asyncio.StreamWriter], Awaitable[None]]
SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")


# ---- the fake engine --------------------------------------------------------------------
def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(data: object) -> bytes:
    return chunk(f"data: {json.dumps(data)}\n\n".encode())


def piece(text: str) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


def answer(*pieces: str) -> Step:
    """A whole streamed reply: its pieces, the finish reason, the usage and [DONE]."""
    async def step(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + b"".join(piece(p) for p in pieces))
        writer.write(event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        writer.write(event({"choices": [], "usage": {"prompt_tokens": 5,
                                                     "completion_tokens": len(pieces)}}))
        writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return step


def malformed(*pieces: str) -> Step:
    """A stream with a line that is not JSON, after ``pieces``."""
    async def step(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + b"".join(piece(p) for p in pieces))
        writer.write(chunk(b'data: {"choices": [\n\n') + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return step


def cut(*pieces: str) -> Step:
    """A stream that ends cleanly after ``pieces``, with no finish reason and no [DONE]."""
    async def step(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + b"".join(piece(p) for p in pieces) + b"0\r\n\r\n")
    return step


def reset(*pieces: str) -> Step:
    """The connection reset after ``pieces`` (before any answer when there are none)."""
    async def step(writer: asyncio.StreamWriter) -> None:
        if pieces:
            writer.write(SSE_HEAD + b"".join(piece(p) for p in pieces))
            await writer.drain()
            await asyncio.sleep(0.05)  # let the client read them first
        writer.transport.abort()
    return step


def trickle(text: str = "") -> Step:
    """A stream that never ends: a keep-alive comment (or ``text``) every 20 ms."""
    async def step(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        while True:
            writer.write(piece(text) if text else chunk(b": keep-alive\n\n"))
            await writer.drain()
            await asyncio.sleep(0.02)
    return step


def status(code: int) -> Step:
    async def step(writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"error": {"message": f"scripted {code}"}}).encode()
        writer.write(b"HTTP/1.1 %d Scripted\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                     % (code, len(body), body))
    return step


class FakeEngine:
    """An OpenAI-compatible engine answering its chat requests with the steps of
    ``script`` in turn (the last one again and again); ``GET /v1/models`` answers 200."""

    def __init__(self, *script: Step) -> None:
        self.script = list(script)
        self.requests = 0  # chat requests
        self.polls = 0  # GET /v1/models
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            await reader.readexactly(int(length.group(1)) if length else 0)
            if head.startswith(b"GET /v1/models"):
                self.polls += 1
                await status(200)(writer)
            else:
                self.requests += 1
                await self.script[min(self.requests, len(self.script)) - 1](writer)
            await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (a deadline, a reset of our own)


# ---- helpers ----------------------------------------------------------------------------
def ask(pieces: list[str] | None = None) -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                       on_token=None if pieces is None else pieces.append)


async def chat(url: str, request: ChatRequest) -> ChatResult:
    """``request`` sent by the client alone, with no pool around it."""
    backend = OpenAICompatibleBackend(orla.backends.openai_compatible("engine", url))
    try:
        return await backend.chat(request)
    finally:
        await backend.aclose()


async def call(url: str, request: ChatRequest, **options: Any) -> Served:
    spec = orla.backends.openai_compatible("engine", url)
    async with BackendPool([spec], **options) as pool:
        return await pool.call("engine", request, run_id="r")


def run(engine: FakeEngine, use: Callable[[str], Awaitable[T]]) -> T:
    async def go() -> T:
        url = await engine.start()
        try:
            return await use(url)
        finally:
            await engine.stop()
    return asyncio.run(go())


def fails(engine: FakeEngine, use: Callable[[str], Awaitable[object]]) -> BackendError:
    with pytest.raises(BackendError) as info:
        run(engine, use)
    assert info.value.backend == "engine" and "'engine'" in str(info.value)
    return info.value


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "RETRY_BACKOFF_S", 0.01)


# ---- streams ----------------------------------------------------------------------------
def test_a_malformed_stream_line_is_a_retryable_error_and_retried() -> None:
    engine = FakeEngine(malformed())
    error = fails(engine, lambda url: chat(url, ask()))
    assert error.retryable and "malformed stream line" in str(error)

    pieces: list[str] = []
    engine = FakeEngine(malformed(), answer("Hel", "lo"))
    served = run(engine, lambda url: call(url, ask(pieces)))
    assert (served.result.content, pieces, served.attempts, engine.requests) == (
        "Hello", ["Hel", "lo"], 2, 2)


def test_a_cut_stream_is_a_retryable_error_not_a_short_answer() -> None:
    engine = FakeEngine(cut("Hel"))
    error = fails(engine, lambda url: chat(url, ask()))
    assert error.retryable and "ended without a finish_reason or [DONE]" in str(error)

    engine = FakeEngine(cut("Hel"), answer("Hel", "lo"))  # no text reached a caller: retried
    served = run(engine, lambda url: call(url, ask()))
    assert (served.result.content, served.result.completion_tokens, served.attempts) == (
        "Hello", 2, 2)


def test_a_failure_after_text_reached_the_caller_is_not_retried() -> None:
    for step, says in ((cut("Hel"), "ended without"), (malformed("Hel"), "malformed"),
                       (reset("Hel"), "after part of the reply had streamed")):
        pieces: list[str] = []
        engine = FakeEngine(step, answer("Hel", "lo"))
        error = fails(engine, lambda url: call(url, ask(pieces)))  # noqa: B023
        assert says in str(error)
        assert (pieces, engine.requests) == (["Hel"], 1)


def test_a_reset_before_any_text_is_retried_and_the_text_arrives_once() -> None:
    pieces: list[str] = []
    # a kept-alive connection the engine closed: the client tries a fresh one at once
    engine = FakeEngine(reset(), answer("Hel", "lo"))
    served = run(engine, lambda url: call(url, ask(pieces)))
    assert (pieces, served.attempts, engine.requests) == (["Hel", "lo"], 1, 2)


def test_a_request_the_engine_drops_twice_is_not_sent_again() -> None:
    engine = FakeEngine(reset(), reset(), answer("never", "sent"))
    error = fails(engine, lambda url: call(url, ask([])))
    assert not error.retryable and "not sent again" in str(error)
    assert engine.requests == 2


# ---- the deadline of a call -------------------------------------------------------------
def test_an_engine_trickling_keep_alives_times_out_at_the_deadline() -> None:
    engine = FakeEngine(trickle())
    error = fails(engine, lambda url: call(url, ask([]), timeout=0.3))
    assert error.retryable and "deadline of 0.3 s" in str(error)
    assert engine.requests == BACKEND_RETRIES + 1


def test_an_engine_trickling_text_times_out_without_a_retry() -> None:
    pieces: list[str] = []
    engine = FakeEngine(trickle("x"))
    error = fails(engine, lambda url: call(url, ask(pieces), timeout=0.3))
    assert "deadline of 0.3 s" in str(error)
    assert engine.requests == 1 and set(pieces) == {"x"}


class Hanging:
    """An in-process backend that never answers."""

    def __init__(self) -> None:
        self.spec: BackendSpec = orla.backends.openai_compatible("engine", "http://unused")
        self.calls = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.calls += 1
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


def test_an_in_process_backend_gets_the_same_deadline() -> None:
    backend = Hanging()

    async def go() -> Served:
        async with BackendPool([backend.spec], clients={"engine": backend}, timeout=0.1) as pool:
            return await pool.call("engine", ask(), run_id="r")

    with pytest.raises(BackendError, match=r"'engine'.*deadline of 0\.1 s"):
        asyncio.run(go())
    assert backend.calls == BACKEND_RETRIES + 1


# ---- an engine that is down -------------------------------------------------------------
def test_an_engine_that_comes_back_is_waited_for() -> None:
    port = free_port()
    engine = FakeEngine(answer("Hel", "lo"))

    async def go() -> Served:
        async def come_back() -> None:
            await asyncio.sleep(1.0)
            await engine.start(port)

        later = asyncio.ensure_future(come_back())
        try:
            return await call(f"http://127.0.0.1:{port}/v1", ask(), engine_down_s=10)
        finally:
            await later
            await engine.stop()

    served = asyncio.run(go())
    assert served.result.content == "Hello"
    assert served.attempts == 2 and engine.requests == 1 and engine.polls >= 1


def test_an_engine_that_stays_down_fails_after_the_budget() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendDown, match=r"'engine': cannot reach .*still down after 0\.5 s"):
        asyncio.run(call(url, ask(), engine_down_s=0.5))


def test_a_503_is_waited_for_and_other_errors_keep_the_small_retry_count() -> None:
    engine = FakeEngine(status(503), status(503), answer("ok"))
    served = run(engine, lambda url: call(url, ask(), engine_down_s=10))
    assert (served.result.content, served.attempts, engine.requests) == ("ok", 3, 3)
    assert engine.polls >= 2  # the engine was polled before each retry

    engine = FakeEngine(status(500))
    assert fails(engine, lambda url: call(url, ask(), engine_down_s=10)).status == 500
    assert engine.requests == BACKEND_RETRIES + 1

    engine = FakeEngine(status(400))
    assert not fails(engine, lambda url: call(url, ask())).retryable
    assert engine.requests == 1


# ---- attempts in a run's records --------------------------------------------------------
@orla.stage(model="light")
def reply(question: str) -> str:
    return str(orla.generate(f"Answer briefly: {question}", max_tokens=8))


@orla.workflow
def one_call(question: str) -> str:
    return reply(question)


class Flaky:
    """An in-process backend that fails ``failures`` times before it answers."""

    def __init__(self, failures: int) -> None:
        self.spec: BackendSpec = orla.backends.openai_compatible("flaky", "http://unused")
        self.failures = failures

    async def chat(self, request: ChatRequest) -> ChatResult:
        if self.failures:
            self.failures -= 1
            raise BackendError("flaky", "scripted failure", retryable=True)
        return ChatResult(content="fine", tool_calls=[], finish_reason="stop", prompt_tokens=3,
                          completion_tokens=1, cached_tokens=0, ttft_s=0.01, duration_s=0.01)

    async def aclose(self) -> None:
        pass


def test_a_runs_call_records_count_the_attempts() -> None:
    backend = Flaky(failures=2)
    plan = orla.compile(one_call, backends=[backend.spec], mapping={"light": "flaky/any"})

    async def go() -> orla.RunResult:
        async with BackendPool(plan.backends, clients={"flaky": backend}) as pool:
            return await orla.arun(plan, pool=pool, question="Where is order 7?")

    result = asyncio.run(go())
    assert result.ok and result.output == "fine"
    [call_record] = [c for record in result.stages for c in record.calls]
    assert call_record.attempts == 3


def test_each_outage_of_a_flapping_engine_gets_its_own_wait() -> None:
    from orla_sdk.runtime.pool import ENGINE_OUTAGES, Retries

    class Flapping:
        """Up at every second poll."""

        def __init__(self) -> None:
            self.polls = 0

        async def ready(self) -> bool:
            self.polls += 1
            return self.polls % 2 == 0

    async def go() -> int:
        retries, engine = Retries("engine", engine_down_s=0.6), Flapping()
        down = BackendDown("engine", "refused the connection")
        outages = 0
        with pytest.raises(BackendDown, match=r"down 4 times during this call"):
            while True:
                await retries.wait(down, engine)  # type: ignore[arg-type]
                outages += 1
                await asyncio.sleep(0.4)  # up a while, then down again
        return outages

    # three outages of up to 0.6 s each, 0.4 s apart: more than 0.6 s in all, each waited
    # for on its own; a fourth is one too many
    assert asyncio.run(go()) == ENGINE_OUTAGES


# ---- the pool's call deadline -----------------------------------------------------------
class Slow:
    """Answers after ``delay_s``; the first ``hang`` calls never answer."""

    def __init__(self, hang: int) -> None:
        self.spec = BackendSpec(name="slow", kind="openai", url="http://127.0.0.1:9/v1")
        self.hang, self.calls = hang, 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.calls += 1
        if self.calls <= self.hang:
            await asyncio.sleep(60)
        return ChatResult(content="late", tool_calls=[], finish_reason="stop",
                          prompt_tokens=1, completion_tokens=1, cached_tokens=0,
                          ttft_s=0.0, duration_s=0.0)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("hang", [1, 10])
def test_a_call_past_the_pools_deadline_is_retried_then_fails_clearly(
        hang: int) -> None:
    backend = Slow(hang)
    request = ChatRequest("m", [{"role": "user", "content": "hi"}])

    async def go() -> tuple[str, float, bool]:
        async with orla.BackendPool([backend.spec], clients={"slow": backend},
                                    timeout=0.2) as pool:
            started = asyncio.get_running_loop().time()
            try:
                outcome = (await pool.call("slow", request, run_id="r")).result.content
            except BackendError as exc:
                outcome = str(exc)
            await asyncio.sleep(0)  # a spent deadline must not cancel what comes next
            return outcome, asyncio.get_running_loop().time() - started, \
                asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    outcome, took_s, not_cancelled = asyncio.run(go())
    assert not_cancelled
    if hang == 1:
        assert outcome == "late" and backend.calls == 2 and took_s < 5
    else:
        assert "did not finish the call within its deadline of 0.2 s" in outcome
        assert backend.calls == 3 and took_s < 5
