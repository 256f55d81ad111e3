"""The lean HTTP/1.1 client for engine calls, against scripted servers on a local port."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from orla_sdk.backends import http1
from orla_sdk.backends.engine import free_port
from orla_sdk.backends.http1 import (
    MAX_BUFFERED,
    ConnectionLost,
    ConnectionPool,
    ProxiedPool,
    Unreachable,
    connection_pool,
)

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A local server that reads each request (head and ``Content-Length`` body) and
    answers it with ``reply``; it counts connections and keeps the requests."""

    def __init__(self, reply: Reply) -> None:
        self.reply, self.connections, self.requests = reply, 0, list[bytes]()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                await self.reply(self.requests[-1], writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client or the test is done
        finally:
            writer.close()


def answer(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def chunked(*pieces: bytes) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def fixed(*answers: bytes, close: bool = False) -> Reply:
    """Answers in turn (the last one again once they run out); ``close`` closes after."""
    sent = iter(answers)

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(next(sent, answers[-1]))
        await writer.drain()
        if close:
            writer.close()
    return reply


LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """asyncio's loop, and uvloop's: uvicorn runs its app, and so any orla call the app
    makes, on uvloop where it is installed, whose transports are not asyncio's classes."""
    if request.param == "asyncio":
        return None
    uvloop_loop: LoopFactory = pytest.importorskip("uvloop").new_event_loop  # dev extra
    return uvloop_loop


def run(reply: Reply, calls: Callable[[ConnectionPool], Awaitable[Any]],
        *, loop_factory: LoopFactory = None,
        **options: Any) -> tuple[Any, Server]:
    """``calls(pool)`` on a pool to a server answering with ``reply``, on a loop from
    ``loop_factory`` (asyncio's by default); its result, and the server (its connections
    and requests)."""
    server = Server(reply)

    async def main() -> Any:
        async with server as url:
            pool = ConnectionPool(url, **options)
            try:
                return await calls(pool)
            finally:
                await pool.aclose()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main()), server


async def post(pool: ConnectionPool, body: bytes = b'{"a": 1}', *, method: str = "POST",
               path: str = "/chat/completions") -> tuple[int, bytes]:
    async with pool.request(method, path, body) as reply:
        return reply.status, await reply.read()


def test_answers_of_either_framing_come_back_whole_on_one_kept_alive_connection(
        loop_factory: LoopFactory) -> None:
    async def calls(pool: ConnectionPool) -> list[tuple[int, bytes]]:
        return [await post(pool), await post(pool), await post(pool)]

    replies, server = run(fixed(answer(b'{"ok": true}', 201), chunked(b"data: 1\n", b"data: 2\n")),
                          calls, loop_factory=loop_factory)
    assert replies == [(201, b'{"ok": true}'), (200, b"data: 1\ndata: 2\n"),
                       (200, b"data: 1\ndata: 2\n")]
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and body == b'{"a": 1}'
    assert b"Content-Type: application/json" in head and b"Content-Length: 8" in head


def test_the_pools_headers_go_with_every_request_and_a_get_has_no_body() -> None:
    async def calls(pool: ConnectionPool) -> int:
        async with pool.request("GET", "/models") as reply:
            await reply.read()
            return reply.status

    status, server = run(fixed(answer(b"{}")), calls, headers={"Authorization": "Bearer k"})
    assert status == 200
    assert server.requests[0].startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert b"Authorization: Bearer k\r\n" in server.requests[0]
    assert b"Content-Length" not in server.requests[0]


def test_a_body_that_ends_when_the_server_closes_is_whole_and_its_connection_not_kept() -> None:
    async def calls(pool: ConnectionPool) -> list[tuple[int, bytes]]:
        return [await post(pool), await post(pool)]

    close_delimited = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n"
    replies, server = run(fixed(close_delimited, close=True), calls)
    assert replies == [(200, b"data: x\n\n")] * 2 and server.connections == 2


def test_a_connection_left_half_read_is_closed_not_pooled() -> None:
    whole = chunked(b"one", b"two")

    async def in_two_parts(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(whole[:-10])
        await asyncio.sleep(0.05)
        writer.write(whole[-10:])

    async def calls(pool: ConnectionPool) -> tuple[int, bytes]:
        async with pool.request("POST", "/chat/completions", b"{}") as reply:
            async for _ in reply.pieces():
                break  # the caller stops reading: the rest of the answer is unread
        return await post(pool)

    reply, server = run(in_two_parts, calls)
    assert reply == (200, b"onetwo") and server.connections == 2


def test_a_kept_alive_connection_the_server_closed_is_not_used_again() -> None:
    async def calls(pool: ConnectionPool) -> list[tuple[int, bytes]]:
        first = await post(pool)
        await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        return [first, await post(pool)]

    keep_then_close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    replies, server = run(fixed(keep_then_close, close=True), calls)
    assert replies == [(200, b"ok")] * 2 and server.connections == 2


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart",
                                  b"NOT HTTP AT ALL\r\n\r\n"])
def test_a_connection_closed_or_garbled_before_the_answer_is_whole_is_lost(sent: bytes) -> None:
    with pytest.raises(ConnectionLost):
        run(fixed(sent, close=True), post)


def test_no_answer_within_the_timeout_is_a_timeout_and_no_server_is_unreachable() -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        run(silent, post, timeout=0.2)

    async def nowhere() -> None:
        await post(ConnectionPool(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(Unreachable, match="cannot connect"):
        asyncio.run(nowhere())


def test_a_cancelled_request_closes_its_connection() -> None:
    async def slow(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        writer.write(answer(b"late"))

    async def calls(pool: ConnectionPool) -> tuple[int, bytes]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(post(pool), 0.05)
        return await post(pool)

    reply, server = run(slow, calls)
    assert reply == (200, b"late") and server.connections == 2


def test_an_answer_larger_than_the_read_buffer_arrives_intact(loop_factory: LoopFactory
                                                             ) -> None:
    big = bytes(range(256)) * (3 * MAX_BUFFERED // 256)

    async def calls(pool: ConnectionPool) -> tuple[int, bytes]:
        async with pool.request("POST", "/x", b"{}") as reply:
            await asyncio.sleep(0.2)  # the server writes ahead; the client stops reading
            return reply.status, await reply.read()

    reply, _ = run(fixed(answer(big)), calls, loop_factory=loop_factory)
    assert reply == (200, big)


def test_an_engine_behind_a_proxy_the_environment_names_is_called_through_httpx(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:3128")
    assert isinstance(connection_pool("https://engine:8000/v1"), ProxiedPool)
    monkeypatch.delenv("ALL_PROXY")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert isinstance(connection_pool("http://engine:8000/v1"), ProxiedPool)
    assert isinstance(connection_pool("http://localhost:8000/v1"), ConnectionPool)

    async def through_the_dead_proxy() -> None:
        pool = connection_pool("http://engine:8000/v1")
        try:
            async with pool.request("POST", "/chat/completions", json.dumps({}).encode()):
                pass
        finally:
            await pool.aclose()
    with pytest.raises(Unreachable):
        asyncio.run(through_the_dead_proxy())


def test_a_connection_paused_on_a_large_answer_left_early_is_not_reused(
        loop_factory: LoopFactory) -> None:
    big = b"x" * (MAX_BUFFERED + 1000)

    async def calls(pool: ConnectionPool) -> tuple[int, bytes]:
        async with pool.request("POST", "/x", b"{}"):
            await asyncio.sleep(0.1)  # all of it arrives; reading pauses past the buffer
        return await post(pool)

    reply, server = run(fixed(answer(big), answer(b"next")), calls, loop_factory=loop_factory)
    assert reply == (200, b"next") and server.connections == 2


def test_interim_answers_are_skipped_for_the_real_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    reply, _ = run(fixed(early + answer(b"real")), post)
    assert reply == (200, b"real")


def test_a_reset_in_a_body_without_a_length_is_lost_not_a_short_answer() -> None:
    async def reset_midway(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\ndata: part")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not an orderly close

    with pytest.raises(ConnectionLost):
        run(reset_midway, post)


def test_idle_connections_expire_and_stray_bytes_close_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def then_stray(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"ok"))
        if b"stray" in request:
            await asyncio.sleep(0.02)
            writer.write(answer(b"nobody asked"))  # arrives on the idle connection

    async def calls(pool: ConnectionPool) -> list[tuple[int, bytes]]:
        replies = [await post(pool, b'{"stray": 1}')]
        await asyncio.sleep(0.1)
        replies.append(await post(pool))  # not the stray answer: a new connection
        monkeypatch.setattr(http1, "IDLE_S", 0.0)
        replies.append(await post(pool))  # the kept one is too old: a new connection
        return replies

    replies, server = run(then_stray, calls)
    assert replies == [(200, b"ok")] * 3 and server.connections == 3


def test_a_pool_closed_mid_call_closes_that_calls_connection_when_it_ends() -> None:
    async def calls(pool: ConnectionPool) -> tuple[tuple[int, bytes], int]:
        async with pool.request("POST", "/x", b"{}") as reply:
            await pool.aclose()
            body = await reply.read()
        return (reply.status, body), len(pool._idle)

    (reply, idle), _ = run(fixed(answer(b"ok")), calls)
    assert reply == (200, b"ok") and idle == 0


def test_a_head_line_or_header_with_cr_lf_or_nul_is_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        ConnectionPool("http://127.0.0.1:9/v1", headers={"Authorization": "Bearer k\n"})
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        run(fixed(answer(b"")), lambda pool: post(pool, path="/x\r\nEvil: 1"))
    with pytest.raises(ValueError, match="HEAD"):
        run(fixed(answer(b"")), lambda pool: post(pool, method="HEAD"))
