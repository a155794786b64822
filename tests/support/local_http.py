"""Real HTTP servers on 127.0.0.1 for the tests of outgoing requests: each answers with a function of
the request and records what it got (method, path, headers as lower-case names, body)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[[Seen, BaseHTTPRequestHandler], Answer | None]  # None: the handler wrote the answer itself


@dataclass
class Server:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # TLS: the SNI each handshake named
    scheme: str = "http"

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


@contextmanager
def serving(answer: Handler, *, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """A threaded server on an ephemeral port of 127.0.0.1 (HTTPS with ``tls``) until the block ends."""
    server = Server(scheme="https" if tls else "http")

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            server.seen.append(seen)
            result = answer(seen, self)
            if result is None:
                return
            status, headers, payload = result
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_HEAD = _handle  # noqa: N815 (http.server's names)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
    httpd.daemon_threads = True
    if tls is not None:
        tls.sni_callback = lambda sock, name, ctx: server.server_names.append(name)  # type: ignore[assignment]
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
