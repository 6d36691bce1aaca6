"""Keep-alive HTTP(S) to one server with the standard library, for VictoriaMetrics.

`requests` costs 130-210 ms to import (urllib3, charset detection, IDNA, cookies), as much as
a one-job `carbond footprint` otherwise needs in all; http.client costs ~35 ms. VictoriaMetrics
is a plain HTTP API on the site network, so what this needs is small: POST a form, stream the
answer, reuse connections across threads, TLS with the site's CA, one retry when a kept-alive
connection was closed by the server. Proxies (HTTP(S)_PROXY) are not used.

A socket timeout bounds one read, not a request: a server that trickles one byte every half
second keeps a read alive for ever. So every request also runs under a `Deadline`, which shuts
its sockets down when the request's total time is up; the blocked read returns at once.
"""

from __future__ import annotations

import base64
import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlencode, urlsplit

Failure = (OSError, http.client.HTTPException)
"""What a request or the reading of its answer can raise: refused, reset, timed out, TLS, a
malformed or truncated answer."""


class DeadlineExceeded(TimeoutError):
    """A request's total time ran out (its sockets were shut down)."""


class Deadline:
    """A total time limit for one request, enforced by a timer thread that shuts its sockets down.

    Watch a socket, or a connection whose `sock` may appear later (connected after the watch):
    once the time is up, every watched socket is shut down, and so is any that appears until the
    deadline is cancelled. `expired` says whether it fired (the answer may be cut short then).
    """

    POLL = 0.1

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._watched: list[object] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carbond-deadline", daemon=True)
        self._thread.start()

    def watch(self, conn: object) -> None:
        with self._lock:
            self._watched.append(conn)
            if self.expired:
                _shutdown(conn)

    def cancel(self) -> None:
        self._done.set()

    def check(self) -> None:
        """Raise DeadlineExceeded if the time ran out (an answer that ended early may look complete)."""
        if self.expired:
            raise DeadlineExceeded(f"no complete answer within {self.seconds:g} s")

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def _run(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.expired = True
        while True:  # also shut sockets that were still connecting when the time ran out
            with self._lock:
                for conn in self._watched:
                    _shutdown(conn)
            if self._done.wait(self.POLL):
                return


def _shutdown(conn: object) -> None:
    sock = conn if isinstance(conn, socket.socket) else getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        try:  # the plain socket's shutdown: an SSLSocket's own would drop its TLS state under a reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def read_capped(read, limit: int, what: str = "answer", block: int = 1 << 16) -> bytes:
    """All of a body through `read(n)`, refusing more than `limit` bytes (ValueError naming both)."""
    parts: list[bytes] = []
    size = 0
    while chunk := read(block):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"{what} larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


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
        """The answer to a POSTed form; its connection is kept if the answer was read to the end.

        Sending, waiting and reading the answer (inside the `with`) take at most `timeout` seconds
        in all; past that, whatever the reader was doing fails with DeadlineExceeded.
        """
        body = urlencode(form).encode()
        head = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        with Deadline(self.timeout) as deadline:
            try:
                conn, resp = self._send(self.prefix + path, body, head, deadline)
            except Failure:
                deadline.check()
                raise
            try:
                yield resp
                deadline.check()
            except BaseException:
                deadline.check()  # whatever a cut-off read raised, the reason is the deadline
                raise
            finally:
                if resp.isclosed() and not resp.will_close and not deadline.expired:
                    with self._lock:
                        self._idle.append(conn)
                else:
                    conn.close()

    def _send(self, path: str, body: bytes, headers: dict[str, str], deadline: Deadline
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        for attempt in (0, 1):
            conn, reused = self._take()
            deadline.watch(conn)
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
