"""A lean HTTP/1.1 client for calls to an engine: kept-alive connections on asyncio,
answers parsed by ``httptools`` (llhttp, the parser uvicorn and Node use).

Each call to an engine pays for its client: ``httpx`` spends about 0.5 ms of CPU on a
short streamed call (request and response objects, hooks, anyio, the pure-Python ``h11``
parser), several times what the engine's HTTP costs. This client does one thing: send a
request on a pooled connection and hand back the answer's status and body pieces.

    pool = ConnectionPool("http://127.0.0.1:8000", headers={"Authorization": "Bearer k"})
    async with pool.request("POST", "/v1/chat/completions", body) as answer:
        async for piece in answer.pieces():
            ...

Failures are three exceptions: ``Unreachable`` (no connection could be made: the engine
is down), ``ConnectionLost`` (the connection closed or sent something that is not HTTP
before the answer was whole) and ``TimeoutError`` (no connection, or no next piece of the
answer, within ``timeout`` seconds). A connection goes back to the pool only when its
answer was read to the end and the server keeps it alive; one left half read (the caller
stopped, failed or was cancelled) is closed, as is one idle for ``IDLE_S`` (servers and
load balancers drop idle connections, some without a word). Connections are not capped:
the backend's queue in front of the engine is the cap. Proxies named by the environment
(``HTTP_PROXY``, ``ALL_PROXY``) are not spoken to: ``connection_pool`` gives ``httpx``'s
client for those engines instead (one client, so the cost of its pool grows with its
connections; few engines sit behind such proxies).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools
import httpx

MAX_BUFFERED = 1 << 20  # unread answer bytes before the connection stops reading
IDLE_S = 4.0  # under the 5 s keep-alive of uvicorn and llama.cpp's server
_FORBIDDEN = frozenset("\r\n\0")  # in a request line or header: they would end it early
_END = b""  # marks the end of an answer among its pieces (a body piece is never empty)


class Unreachable(ConnectionError):
    """No connection to the server could be made."""


class ConnectionLost(ConnectionError):
    """The connection closed, or sent what is not HTTP, before the answer was whole."""


class Body(Protocol):
    """An answer being read, from either pool."""

    status: int

    def pieces(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class Pool(Protocol):
    """Connections to one server, from ``connection_pool``."""

    url: str

    def request(self, method: str, path: str, body: bytes = b"", *, fresh: bool = False,
                timeout: float | None = None) -> AbstractAsyncContextManager[Body]: ...

    async def aclose(self) -> None: ...


def uses_proxy(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (``HTTP_PROXY`` and kin)."""
    parts, proxies = urlsplit(url), urllib.request.getproxies()
    return ((parts.scheme in proxies or "all" in proxies)
            and not urllib.request.proxy_bypass(parts.hostname or ""))


class _Connection(asyncio.Protocol):
    """One kept-alive connection: the answer it is reading arrives as pieces in a queue."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.pieces: deque[bytes | BaseException] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.framed = False  # a Content-Length or chunks say where the body ends
        self.complete = self.keep_alive = False
        self.drained = False  # the caller read the answer to its end
        self.in_use = False  # a request is out and its answer not yet read
        self.idle_since = 0.0
        self.closed = False

    # -- asyncio's side --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # nothing asked: a server's parting words, or a stray answer
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._put(ConnectionLost(f"the server sent what is not HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self.status and not self.framed and not self.complete:
            self.on_message_complete()  # a body without a length ends when the server closes
        elif not self.complete:
            self._put(ConnectionLost(f"the server closed the connection ({exc or 'EOF'})"))

    # -- the parser's side --
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding"
                                         and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        if self.status in (204, 304):
            self.framed = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._put(body)
        self.buffered += len(body)
        if self.buffered > MAX_BUFFERED and self.transport is not None:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if not self.status:
            return  # the end of an interim answer
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # reset once the parser moves on
        self._put(_END)

    # -- the caller's side --
    def send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.pieces.clear()
        self.buffered = self.status = 0
        self.framed = self.complete = self.keep_alive = self.drained = False
        self.in_use = True
        self.transport.write(head + body)

    async def next_piece(self, timeout: float) -> bytes:
        """The answer's next body piece; ``_END`` once it is whole."""
        while not self.pieces:
            await self._wait(timeout)
        piece = self.pieces.popleft()
        if isinstance(piece, BaseException):
            raise piece
        self.drained = piece is _END
        self.buffered -= len(piece)
        if self.transport is not None and self.buffered <= MAX_BUFFERED // 2:
            self.transport.resume_reading()
        return piece

    async def wait_for_head(self, timeout: float) -> None:
        """Wait until the answer's status line and headers are in."""
        while not self.status:
            failure = self.pieces[0] if self.pieces else None
            if isinstance(failure, BaseException):  # a failure before the head
                raise failure
            await self._wait(timeout)

    async def _wait(self, timeout: float) -> None:
        """Until the parser or the connection has news, or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout, _time_out, self.waiter, timeout)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    def release(self) -> bool:
        """Done with the answer: whether the connection can carry another request (the
        answer was read to its end and the server keeps it open)."""
        self.in_use = False
        self.idle_since = time.monotonic()
        return self.drained and self.keep_alive and not self.closed

    def stale(self) -> bool:
        return self.closed or time.monotonic() - self.idle_since > IDLE_S

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _put(self, piece: bytes | BaseException) -> None:
        self.pieces.append(piece)
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _checked(line: str) -> str:
    """``line`` of a request's head, refused if it holds what would end it early."""
    if not _FORBIDDEN.isdisjoint(line):
        raise ValueError(f"{line[:80]!r}...: a request line or header may not hold CR, LF or "
                         "NUL (a key read from a file with its newline?)")
    return line


def _time_out(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer from the server within {timeout:g} s"))


@dataclass
class Answer:
    """An answer being read: its status, and its body as it arrives."""

    status: int
    _connection: _Connection
    _timeout: float

    async def pieces(self) -> AsyncIterator[bytes]:
        while piece := await self._connection.next_piece(self._timeout):
            yield piece

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.pieces()])


class ConnectionPool:
    """Kept-alive connections to one server (``http://`` or ``https://``), made as calls
    need them; every request carries ``headers``."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None,
                 timeout: float = 120.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = base_url.rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._tls = parts.scheme == "https"
        self._ssl = ssl_context
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"Host: {host}{f':{parts.port}' if parts.port else ''}",
                 "User-Agent: orla_sdk", "Accept: */*",
                 *(f"{name}: {value}" for name, value in (headers or {}).items())]
        self._headers = "".join(f"{_checked(line)}\r\n" for line in lines).encode("latin-1")
        self._idle: list[_Connection] = []
        self._closed = False

    @asynccontextmanager
    async def request(self, method: str, path: str, body: bytes = b"", *,
                      fresh: bool = False, timeout: float | None = None
                      ) -> AsyncIterator[Answer]:
        """Send a request (``body`` as JSON) and yield its answer once its head is in.
        ``fresh`` skips the kept-alive connections: a new one is made."""
        timeout = self.timeout if timeout is None else timeout
        connection = self._idle_connection() if not fresh else None
        connection = connection or await self._connect(timeout)
        try:
            connection.send(self._head(method, path, len(body)), body)
            await connection.wait_for_head(timeout)
            yield Answer(connection.status, connection, timeout)
        finally:
            if connection.release() and not self._closed:
                self._idle.append(connection)
            else:
                connection.close()

    async def aclose(self) -> None:
        """Close the idle connections; those of requests under way close as they end."""
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.stale():
                return connection
            connection.close()
        return None

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._tls and self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # certifi's roots, as httpx verifies with
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._tls else None)
        except TimeoutError:
            raise TimeoutError(f"could not connect to {self.host}:{self.port} within "
                               f"{timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return connection

    def _head(self, method: str, path: str, length: int) -> bytes:
        if method == "HEAD":  # its answer has no body, which the parser cannot be told
            raise ValueError("HEAD requests are not supported; use GET")
        line = _checked(f"{method} {self.prefix}{path} HTTP/1.1")
        start = f"{line}\r\n".encode("latin-1") + self._headers
        if method == "GET" and not length:
            return start + b"\r\n"
        return start + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length


class ProxiedPool:
    """The same requests through ``httpx``, which speaks to the proxies the environment
    names (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and raises this
    module's errors. ``fresh`` is not honoured: httpx picks the connection."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None,
                 timeout: float = 120.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url, self.timeout = base_url.rstrip("/"), timeout
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout,
                                         limits=httpx.Limits(max_connections=None),
                                         transport=transport)

    @asynccontextmanager
    async def request(self, method: str, path: str, body: bytes = b"", *,
                      fresh: bool = False, timeout: float | None = None
                      ) -> AsyncIterator[ProxiedAnswer]:
        headers = {"Content-Type": "application/json"} if body else None
        try:
            async with self._client.stream(method, path, content=body or None, headers=headers,
                                           timeout=timeout or self.timeout) as response:
                yield ProxiedAnswer(response.status_code, response)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"no answer through the proxy: {exc!r}") from exc
        except httpx.ConnectError as exc:
            raise Unreachable(f"cannot connect through the proxy: {exc!r}") from exc
        except httpx.HTTPError as exc:  # the connection, or what came over it
            raise ConnectionLost(f"the connection closed: {exc!r}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass
class ProxiedAnswer:
    status: int
    _response: httpx.Response

    async def pieces(self) -> AsyncIterator[bytes]:
        async for piece in self._response.aiter_bytes():
            yield piece

    async def read(self) -> bytes:
        return await self._response.aread()


def connection_pool(base_url: str, *, headers: dict[str, str] | None = None,
                    timeout: float = 120.0, transport: httpx.AsyncBaseTransport | None = None
                    ) -> Pool:
    """The lean pool, or ``httpx`` where the environment routes ``base_url`` through a
    proxy (or a ``transport`` of its own is given: a test's scripted one)."""
    if transport is not None or uses_proxy(base_url):
        return ProxiedPool(base_url, headers=headers, timeout=timeout, transport=transport)
    return ConnectionPool(base_url, headers=headers, timeout=timeout)
