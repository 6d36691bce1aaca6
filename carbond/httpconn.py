"""Keep-alive HTTP(S) to one server with the standard library, for VictoriaMetrics.

`requests` costs 130-210 ms to import (urllib3, charset detection, IDNA, cookies), as much as
a one-job `carbond footprint` otherwise needs in all; http.client costs ~35 ms. VictoriaMetrics
is a plain HTTP API on the site network, so what this needs is small: POST a form, stream the
answer, reuse connections across threads, TLS with the site's CA, one retry when a kept-alive
connection was closed by the server. Proxies (HTTP(S)_PROXY) are not used.
"""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlencode, urlsplit

Failure = (OSError, http.client.HTTPException)
"""What a request or the reading of its answer can raise: refused, reset, timed out, TLS, a
malformed or truncated answer."""


class Connections:
    """Idle connections to one scheme://host:port, taken by one request at a time."""

    def __init__(self, url: str, timeout: float, ca_file: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.ca_file = ca_file
        self.userinfo = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._tls = None

    @contextmanager
    def post(self, path: str, form: dict[str, str], headers: dict[str, str]) -> Iterator[http.client.HTTPResponse]:
        """The answer to a POSTed form; its connection is kept if the answer was read to the end."""
        body = urlencode(form).encode()
        head = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        conn, resp = self._send(self.prefix + path, body, head)
        try:
            yield resp
        finally:
            if resp.isclosed() and not resp.will_close:
                with self._lock:
                    self._idle.append(conn)
            else:
                conn.close()

    def _send(self, path: str, body: bytes, headers: dict[str, str]
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                conn.request("POST", path, body=body, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not reused or attempt:  # only an idle connection the server dropped is retried
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if not self.https:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout), False
        return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context()), False

    def _context(self):
        if self._tls is None:
            import ssl

            self._tls = ssl.create_default_context(cafile=self.ca_file)
        return self._tls

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
