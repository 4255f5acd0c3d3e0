"""A lean HTTP/1.1 client for the election's RPCs: one small JSON call on a kept-alive socket.

A leader calls every peer many times a second with a few hundred bytes, and
``requests`` costs about five times what the call itself does (measured here:
444 µs of CPU per heartbeat through ``requests``, 87 µs through a socket).
:class:`RpcClient` does only what these calls need: one request in one
``send``, a reply with a ``Content-Length`` (or chunked) read to its end, the
connection kept for the next call, a deadline on every call, TLS when the peer
is ``https://``. It is used for the RPCs alone; status queries, which people and
tools make, go through ``requests`` (see :mod:`flask_goelect.transport`).

In a gevent-patched process the socket is gevent's and the call cooperates;
elsewhere it blocks its thread. There are no retries, but one: a request that
fails on a *reused* connection before any byte of a reply came back is sent once
more on a new connection (the peer closed the idle connection, or restarted),
which is not a failure of the peer.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HttpError", "Reply", "RpcClient"]

#: The largest head (status line and headers) of a reply accepted.
MAX_HEAD = 16 * 1024


class HttpError(Exception):
    """A call failed; ``kind`` is ``"connect"``, ``"timeout"``, ``"closed"`` or ``"protocol"``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Reply:
    """A reply: status, headers (names in lower case) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection:
    """One kept-alive socket to the peer."""

    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def open(self) -> bool:
        """Whether the peer still keeps the connection open: nothing to read on it
        (readable, an idle connection is closed or holds bytes nobody asked for)."""
        if self.buffer:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class RpcClient:
    """Calls one peer at ``base_url`` (``http://host:port`` or ``https://...``).

    :param ssl_context: for ``https://`` peers (default: the system's trust store).
    :param max_body: the largest reply body accepted.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = 64 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.base_url = base_url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        self.host_header = host if default else f"{host}:{self.port}"
        self.max_body = max_body
        self._ssl: ssl.SSLContext | None = None
        if self.tls:
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<RpcClient {self.base_url!r}>"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copies of the idle connections.

        Takes no lock: a thread of the parent (the election loop's, say) may have
        held it at the fork, and that thread does not exist here.
        """
        self._lock = threading.Lock()
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def drop_idle(self) -> None:
        """Close the kept-alive connections; the next call opens a new one."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def connect(self, timeout: float) -> None:
        """Open a connection now and keep it (so that the first call does not pay for it)."""
        conn = self._connect(time.monotonic() + timeout)
        self._release(conn)

    def call(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> Reply:
        """Send ``method path`` with ``body``; the reply, read to its end.

        ``timeout`` is ``(connect, read)``: a new connection must be made within
        the first, and the reply must have come back within the second after the
        request was sent.

        :raises HttpError: no connection, no reply in time, a closed connection,
            or a reply that is not HTTP this client accepts.
        """
        head = [
            f"{method} {self.base_path}{path} HTTP/1.1",
            f"Host: {self.host_header}",
            "Accept: application/json",
        ]
        if method != "GET" or body:
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(body)}")
        head.extend(f"{name}: {value}" for name, value in headers.items())
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        conn, reused = self._take(timeout[0])
        try:
            return self._exchange(conn, data, timeout[1])
        except _NothingBack as exc:
            conn.close()
            if not reused:
                raise HttpError("closed", str(exc)) from None
        # The idle connection was closed by the peer: once more, on a new one.
        conn = self._connect(time.monotonic() + timeout[0])
        try:
            return self._exchange(conn, data, timeout[1])
        except _NothingBack as exc:
            conn.close()
            raise HttpError("closed", str(exc)) from None

    # -- connections ---------------------------------------------------------------------

    def _take(self, connect_timeout: float) -> tuple[_Connection, bool]:
        while True:
            with self._lock:
                if self._closed:
                    raise HttpError("closed", "the client is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(time.monotonic() + connect_timeout), False
            if conn.open():
                return conn, True
            conn.close()

    def _release(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < 4:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self, deadline: float) -> _Connection:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpError("connect", "no time left to connect")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=remaining)
        except TimeoutError:
            raise HttpError("connect", f"no connection within {remaining:.3g}s") from None
        except OSError as exc:
            raise HttpError("connect", f"{type(exc).__name__}: {exc}") from None
        try:
            # Small calls on a kept-alive connection: without it, each waits for the
            # delayed ACK of the previous one (about 40 ms on Linux).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
        except TimeoutError:
            sock.close()
            raise HttpError("connect", "no TLS handshake in time") from None
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise HttpError("connect", f"{type(exc).__name__}: {exc}") from None
        except BaseException:  # killed during the TLS handshake
            sock.close()
            raise
        return _Connection(sock)

    # -- one exchange --------------------------------------------------------------------

    def _exchange(self, conn: _Connection, data: bytes, read_timeout: float) -> Reply:
        deadline = time.monotonic() + read_timeout
        sock = conn.sock
        try:
            sock.settimeout(read_timeout)
            sock.sendall(data)
            status, headers, keep = self._read_head(conn, deadline)
            body = self._read_body(conn, headers, deadline)
        except _NothingBack:
            raise
        except TimeoutError:
            conn.close()
            raise HttpError("timeout", f"no reply within {read_timeout:.3g}s") from None
        except HttpError:
            conn.close()
            raise
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise HttpError("closed", f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            # Killed in the middle of a call (a stop gives up on a slow peer):
            # the connection is in an unknown state, and must not be left open.
            conn.close()
            raise
        if keep:
            self._release(conn)
        else:
            conn.close()
        return Reply(status, headers, body)

    def _recv(self, conn: _Connection, deadline: float, *, first: bool = False) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        conn.sock.settimeout(remaining)
        try:
            chunk = conn.sock.recv(65536)
        except ConnectionResetError as exc:
            if first:
                raise _NothingBack(f"the connection was reset: {exc}") from None
            raise
        if not chunk:
            if first:
                raise _NothingBack("the peer closed the connection")
            raise HttpError("closed", "the peer closed the connection in the middle of a reply")
        return chunk

    def _read_head(self, conn: _Connection, deadline: float) -> tuple[int, dict[str, str], bool]:
        buffer = conn.buffer
        first = not buffer
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_HEAD:
                raise HttpError("protocol", f"a reply head over {MAX_HEAD} bytes")
            buffer += self._recv(conn, deadline, first=first)
            first = False
        head, _, conn.buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError("protocol", f"not an HTTP reply: {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError("protocol", f"a malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return status, headers, keep

    def _read_body(self, conn: _Connection, headers: dict[str, str], deadline: float) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked(conn, deadline)
        length_text = headers.get("content-length")
        if length_text is None or not length_text.isdigit():
            raise HttpError("protocol", "a reply without a Content-Length")
        length = int(length_text)
        if length > self.max_body:
            raise HttpError("protocol", f"a {length}-byte reply; too large")
        while len(conn.buffer) < length:
            conn.buffer += self._recv(conn, deadline)
        body, conn.buffer = conn.buffer[:length], conn.buffer[length:]
        return body

    def _read_chunked(self, conn: _Connection, deadline: float) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in conn.buffer:
                if len(conn.buffer) > 1024:
                    raise HttpError("protocol", "a malformed chunk")
                conn.buffer += self._recv(conn, deadline)
            size_line, _, conn.buffer = conn.buffer.partition(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError("protocol", "a malformed chunk size") from None
            if len(body) + size > self.max_body:
                raise HttpError("protocol", f"a reply over {self.max_body} bytes; too large")
            while len(conn.buffer) < size + 2:
                conn.buffer += self._recv(conn, deadline)
            if size == 0:
                # The last chunk (trailers are not used here): its CRLF ends the body.
                conn.buffer = conn.buffer[2:]
                return body
            body += conn.buffer[:size]
            conn.buffer = conn.buffer[size + 2 :]


class _NothingBack(Exception):
    """The connection ended before the first byte of a reply: maybe a stale one."""
