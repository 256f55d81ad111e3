"""An HTTP proxy that breaks a share of the chat calls passing through it, the way real
deployments break: 503s, connections reset before and during a stream, streams cut short
or carrying a malformed line, calls that hang, and engine restarts that refuse every
connection for a few seconds.

    proxy = FaultProxy("http://127.0.0.1:8080", rate=0.1, seed=1)
    url = proxy.start()            # serve on a free port, on a thread of its own
    ...
    proxy.stop(); print(proxy.counts)

Only ``POST .../chat/completions`` is faulted; health checks and the rest pass through.
Each connection carries one request (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from urllib.parse import urlsplit

import httpx

from orla_sdk.loop_thread import LoopThread

FAULTS = {  # kind -> weight among faulted attempts
    "status_503": 3, "reset_before": 2, "reset_during": 2, "truncated": 2, "malformed": 2,
    "hang": 1, "restart": 0.2,
}


class FaultProxy:
    def __init__(self, upstream: str, *, rate: float, seed: int = 0, hang_s: float = 60.0,
                 restart_s: tuple[float, float] = (3.0, 6.0)) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate, self.hang_s, self.restart_s = rate, hang_s, restart_s
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.thread = LoopThread("fault-proxy")
        self.port = 0
        self._server: asyncio.Server | None = None
        self._restarting = False
        self._restarter: asyncio.Future[None] | None = None
        self._http: httpx.AsyncClient | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> str:
        self.thread.start()
        self.thread.call(self._listen())
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.thread.call(self._close())
        self.thread.stop()

    async def _listen(self) -> None:
        self._http = self._http or httpx.AsyncClient(timeout=None)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._http is not None:
            await self._http.aclose()

    async def _restart(self) -> None:
        """Refuse every connection for a few seconds, like an engine restarting."""
        assert self._server is not None
        self._restarting = True
        self._server.close()
        await asyncio.sleep(self.rng.uniform(*self.restart_s))
        await self._listen()
        self._restarting = False

    # ---- one connection ---------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, headers, body = await _read_request(reader)
            fault = self._pick() if method == "POST" and path.endswith("/chat/completions") \
                else None
            self.counts[fault or "clean"] += 1
            await self._serve(fault, method, path, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError, httpx.HTTPError,
                asyncio.CancelledError):  # cancelled: the proxy is stopping
            writer.transport.abort()
        finally:
            writer.close()

    def _pick(self) -> str | None:
        if self.rng.random() >= self.rate:
            return None
        kinds = [k for k in FAULTS if k != "restart" or not self._restarting]
        return self.rng.choices(kinds, [FAULTS[k] for k in kinds])[0]

    async def _serve(self, fault: str | None, method: str, path: str, headers: dict[str, str],
                     body: bytes, writer: asyncio.StreamWriter) -> None:
        if fault in ("reset_before", "restart"):
            if fault == "restart":
                self._restarter = asyncio.ensure_future(self._restart())
            writer.transport.abort()
            return
        if fault == "status_503":
            _write_head(writer, 503, {"content-type": "application/json"},
                        b'{"error": {"message": "overloaded"}}')
            return
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
            writer.transport.abort()
            return
        await self._forward(fault, method, path, headers, body, writer)

    async def _forward(self, fault: str | None, method: str, path: str,
                       headers: dict[str, str], body: bytes,
                       writer: asyncio.StreamWriter) -> None:
        assert self._http is not None
        sent = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
        async with self._http.stream(method, self.upstream + path, content=body,
                                     headers=sent) as response:
            kind = response.headers.get("content-type", "")
            if "text/event-stream" not in kind:
                _write_head(writer, response.status_code, {"content-type": kind},
                            await response.aread())
                return
            writer.write(f"HTTP/1.1 {response.status_code} OK\r\ncontent-type: {kind}\r\n"
                         "transfer-encoding: chunked\r\nconnection: close\r\n\r\n".encode())
            await self._relay_events(fault, response, writer)

    async def _relay_events(self, fault: str | None, response: httpx.Response,
                            writer: asyncio.StreamWriter) -> None:
        events = 0
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            events += 1
            if fault == "reset_during" and events > 2:
                writer.transport.abort()  # the connection dies with text already sent
                return
            if fault == "truncated" and ('"finish_reason": "' in line or "[DONE]" in line
                                         or '"finish_reason":"' in line):
                break  # the stream ends cleanly, but before its end
            _chunk(writer, (line + "\n\n").encode())
            if fault == "malformed" and events == 1:
                _chunk(writer, b'data: {"choices": [{"delta": {"content": "x"\n\n')
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _read_request(reader: asyncio.StreamReader
                        ) -> tuple[str, str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines if ":" in line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, urlsplit(target).path, headers, body


def _write_head(writer: asyncio.StreamWriter, status: int, headers: dict[str, str],
                body: bytes) -> None:
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers.items()),
             f"content-length: {len(body)}", "connection: close", "", ""]
    writer.write("\r\n".join(lines).encode() + body)


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
