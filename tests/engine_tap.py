"""A recording pass-through in front of an engine, for differential tests.

Bare and served runs of one app both talk to the tap, which forwards every request to
the engine unchanged (streams piece by piece) and keeps what reached it, so a test can
compare the settings (``max_tokens``, ``temperature``, ``stop``) each run sent.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass(frozen=True)
class Tapped:
    method: str
    path: str
    body: dict[str, Any]


class EngineTap:
    """``url`` is the engine's stand-in; ``chats()`` the chat completion bodies it saw."""

    def __init__(self, engine_url: str) -> None:
        target = urlsplit(engine_url)
        self.host, self.port = target.hostname or "127.0.0.1", target.port or 80
        self.seen: list[Tapped] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def record(self, method: str, path: str, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        with self._lock:
            self.seen.append(Tapped(method, path, body if isinstance(body, dict) else {}))

    def chats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [t.body for t in self.seen if t.path.endswith("/chat/completions")]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(tap: EngineTap) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the answer ends when the connection closes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def forward(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            tap.record(self.command, self.path, raw)
            upstream = http.client.HTTPConnection(tap.host, tap.port, timeout=300)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(raw))
            try:
                upstream.request(self.command, self.path, raw, headers)
                answer = upstream.getresponse()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.end_headers()
                while piece := answer.read1(65536):
                    self.wfile.write(piece)
                    self.wfile.flush()
            finally:
                upstream.close()

        do_GET = do_POST = do_DELETE = do_PUT = forward

    return Forward
