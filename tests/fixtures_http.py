"""A real HTTP server on 127.0.0.1 standing in for a remote JSON API (Carbon Intensity, Electricity Maps).

Tests register routes (a regular expression over the path) answering either a fixed
(status, body) or a callable that receives the recorded request. Every request is recorded
(path, query, headers) so tests can count them; `stop()` closes the port to simulate an outage
(connections are refused) and `start()` serves again on the same port.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """Percent-decoded path, without the query string."""
    query: dict[str, str]
    """Query parameters, last value wins."""
    headers: dict[str, str]
    """Header names lower-cased."""


Answer = tuple[int, Any]
"""(status, body): a dict/list is sent as JSON, str/bytes as they are."""
Handler = Callable[[Request], Answer] | Answer


@dataclass
class HttpAPI:
    routes: list[tuple[re.Pattern[str], Handler]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, pattern: str, handler: Handler) -> None:
        """Answer paths fully matching `pattern`; later routes win over earlier ones."""
        self.routes.insert(0, (re.compile(pattern), handler))

    def count(self, pattern: str = ".*") -> int:
        """Requests so far whose path fully matches `pattern`."""
        rx = re.compile(pattern)
        with self._lock:
            return sum(1 for r in self.requests if rx.fullmatch(r.path))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> HttpAPI:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_class(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: new connections are refused until start()."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = self._thread = None

    def _answer(self, req: Request) -> Answer:
        with self._lock:
            self.requests.append(req)
        for rx, handler in self.routes:
            if rx.fullmatch(req.path):
                return handler(req) if callable(handler) else handler
        return 404, {"error": f"no route for {req.path}"}


def _handler_class(api: HttpAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so stop() leaves no kept-alive socket answering

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Request("GET", unquote(parts.path), query, headers)
            try:
                status, body = api._answer(req)
            except Exception as exc:  # noqa: BLE001 - a broken test handler becomes a visible 500
                status, body = 500, {"error": f"test handler failed: {exc!r}"}
            if isinstance(body, (dict, list)):
                data, ctype = json.dumps(body).encode(), "application/json"
            else:
                data, ctype = (body.encode() if isinstance(body, str) else body), "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet in tests
            pass

    return Handler


@pytest.fixture
def http_api() -> Iterator[HttpAPI]:
    api = HttpAPI().start()
    try:
        yield api
    finally:
        api.stop()
